"""Pickling for the wire: what plain pickle can send, and what must travel by value."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from microkernel.services.execution_manager.wire.serialization import dumps, mentions_main

ROOT = Path(__file__).resolve().parents[3]
BIG = b"x" * (1 << 20)


class Shape:
    """Stands in for a class defined in a user's script (``__main__``)."""

    def __init__(self, sides: int) -> None:
        self.sides = sides


@pytest.fixture
def shape_in_main(monkeypatch: pytest.MonkeyPatch) -> type[Shape]:
    monkeypatch.setattr(Shape, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Shape", Shape, raising=False)
    return Shape


@pytest.mark.parametrize(("make", "expected"), [
    (lambda S: (1, 2), False),
    (lambda S: (S(3),), True),
    (lambda S: (BIG, "x" * 300_000, bytearray(200_000)), False),
    (lambda S: (BIG, S(3)), True),  # the reference comes after the large bytes
    (lambda S: (S, BIG), True),
    (lambda S: [b"y" * 100_000, S(4), "a" * 200_000], True),  # small opcodes between frames
    (lambda S: (b"__main__" * 20_000,), False),  # only data that reads "__main__": no reference
], ids=["small", "small-main", "large", "large-then-main", "main-then-large", "unframed", "data-only"])
def test_mentions_main_finds_references_and_skips_large_data(shape_in_main: type[Shape], make, expected) -> None:
    data = pickle.dumps(make(shape_in_main), protocol=pickle.HIGHEST_PROTOCOL)
    assert mentions_main(data) is expected
    if not expected:
        assert dumps(make(shape_in_main)) == data  # plain pickle kept: no cloudpickle needed


@pytest.mark.timeout(90)
def test_a_scripts_own_function_and_class_run_on_a_worker_with_a_large_argument(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        import asyncio
        from kernel import Kernel

        class Box:
            def __init__(self, data):
                self.data = data

        def measure(payload, box):
            return len(payload) + len(box.data), type(box).__name__

        async def main():
            settings = {"execution-manager": {"minWorkers": 1, "maxWorkers": 1, "inProcess": False}}
            async with Kernel([], settings=settings) as kernel:
                em = kernel.get_service("execution-manager")
                print(await em.submit(measure, b"x" * (1 << 20), Box(b"y" * 10)))

        asyncio.run(main())
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "(1048586, 'Box')"
