"""The work every contender runs (importable in every worker by reference)."""

from __future__ import annotations

import os


def inc(x: int) -> int:
    return x + 1


def burn(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def echo(data: bytes) -> bytes:
    return data


def crash() -> None:
    os._exit(1)


def inc_all(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]
