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


_LOG: dict[str, int] = {}  # log directory -> this process's append-only file


def mark(token: int, log_dir: str) -> int:
    """Writes ``token`` to this process's log as the call begins (one write, so a kill
    right after loses nothing), then returns it: the soak counts calls that ran twice."""
    fd = _LOG.get(log_dir)
    if fd is None:
        fd = _LOG[log_dir] = os.open(os.path.join(log_dir, f"{os.getpid()}.log"),
                                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(fd, b"%d\n" % token)
    return token


def hold_until(path: str, timeout: float = 3600.0) -> bool:
    """Keeps its worker busy until ``path`` exists (the benchmark's gate)."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.path.exists(path)
