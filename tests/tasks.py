"""Functions the tests run on workers (importable there by reference)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any


def inc(x: int) -> int:
    return x + 1


def whoami() -> int:
    return os.getpid()


def slow(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def crash(code: int = 1) -> None:
    os._exit(code)


def break_protocol() -> None:
    """Write a frame of an unknown message type on the worker's own socket (its fd is
    the worker's first argument), as a broken or hostile worker would."""
    import msgpack

    body = msgpack.packb([42, 1])
    os.write(int(sys.argv[1]), len(body).to_bytes(4, "big") + body)
    time.sleep(1)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


class CustomError(Exception):
    pass


class UnrebuildableError(Exception):
    """Cannot be rebuilt from its pickle (its __init__ needs two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_custom(msg: str) -> None:
    raise CustomError(msg)


def raise_unrebuildable() -> None:
    raise UnrebuildableError("x", "y")


def make_lock() -> Any:
    return threading.Lock()


def crash_unless_marker(marker: str) -> str:
    """Kills its worker the first time (no marker file yet), succeeds the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return "survived"


def touch(path: str) -> str:
    with open(path, "a") as fh:
        fh.write("ran\n")
    return path


def stubborn_sleep(seconds: float) -> None:
    """Ignores SIGTERM, so only SIGKILL stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def stamp(tag: str, seconds: float = 0.0) -> tuple[str, float, float]:
    """Runs ``seconds`` and says when (wall clock, comparable across processes)."""
    start = time.time()
    time.sleep(seconds)
    return tag, start, time.time()


_HOARD: list[bytearray] = []


def hoard(mib: int) -> int:
    """Keeps ``mib`` MiB alive in this worker (its RSS grows) and returns the pid."""
    _HOARD.append(bytearray(mib << 20))
    return os.getpid()


def touch_after(path: str, seconds: float) -> str:
    time.sleep(seconds)
    return touch(path)


def flaky(counter: str, failures: int) -> int:
    """Raises ConnectionError the first ``failures`` times (counted in a file)."""
    with open(counter, "a+") as fh:
        fh.seek(0)
        seen = len(fh.read())
        fh.write("x")
    if seen < failures:
        raise ConnectionError(f"flaky failure {seen + 1}")
    return seen + 1


def flaky_attempts(counter: str, failures: int) -> tuple[int, int]:
    """As :func:`flaky`; returns the task id and the attempt number the call saw."""
    from kernel import task

    flaky(counter, failures)
    info = task.current()
    assert info is not None
    return info.call_id, info.attempt


def leak(step_mib: int, steps: int, pause: float) -> int:
    """Leaks memory in steps (kept alive), as a runaway call does."""
    for _ in range(steps):
        _HOARD.append(bytearray(step_mib << 20))
        time.sleep(pause)
    return os.getpid()


def sleep_then_clean_up(seconds: float, marker: str) -> str:
    from microkernel.services.execution_manager.errors import SoftTimeoutError

    try:
        time.sleep(seconds)
    except SoftTimeoutError:
        touch(marker)
        return "cleaned up"
    return "finished"


def announce_then_wait(path: str, seconds: float) -> None:
    """Writes its pid to ``path`` (the test's signal that it runs), then waits."""
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)


def report_then_wait(fraction: float, seconds: float) -> float:
    """Reports progress ``fraction`` (the dashboard shows it), then works ``seconds``."""
    from kernel import task

    task.progress(fraction, "halfway there")
    time.sleep(seconds)
    return fraction


def log_with_logging(n: int) -> int:
    """Logs through the standard library, as most libraries do."""
    import logging

    logging.getLogger("etl.rows").warning("row %d is bad", n)
    try:
        raise KeyError("date")
    except KeyError:
        logging.getLogger("etl").exception("parse failed")
    return n


def hold_gil(n: int) -> int:
    """Holds the GIL for the whole of one C call (no thread of this process runs meanwhile)."""
    return sum(range(n))


def wedge_after_return(delay: float) -> str:
    """Returns at once; ``delay`` seconds later a thread takes the GIL for good, so the
    worker, idle, can no longer answer anything."""

    def hog() -> None:
        time.sleep(delay)
        sum(range(10**12))

    threading.Thread(target=hog, daemon=True).start()
    return "wedged"


def stop_self_after(delay: float) -> str:
    """Returns at once; ``delay`` seconds later the worker stops itself (SIGSTOP)."""

    def stop() -> None:
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGSTOP)

    threading.Thread(target=stop, daemon=True).start()
    return "will stop"


def log_lines(n: int, pause: float = 0.0) -> int:
    """Writes ``n`` log lines through kernel.task.log (a job's log gets them)."""
    from kernel import task

    for i in range(n):
        task.log(f"line {i}")
        time.sleep(pause)
    return n


def touch_then_wait(path: str, seconds: float) -> str:
    """Marks that it ran (a line per run in ``path``), then works ``seconds``."""
    touch(path)
    time.sleep(seconds)
    return path


def sized(n: int) -> str:
    return "x" * n


def a_set() -> set[int]:
    return {1, 2}


def spawn_and_wait(pid_file: str, seconds: float) -> int:
    """Start a command (``sleep``) as a child of the worker, say its pid, and wait for it."""
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    with open(pid_file + ".tmp", "w") as out:
        out.write(str(child.pid))
    os.replace(pid_file + ".tmp", pid_file)
    return child.wait()
