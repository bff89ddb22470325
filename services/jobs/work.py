"""What job calls run on a worker: a function by reference, a module, Python source, a
command, an HTTP request. Imported on workers; nothing here runs in the kernel."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import io
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from kernel import task

from .settings import JobError


class WorkFailed(Exception):
    """The job's own work failed (a command's exit code, an HTTP status)."""


def resolve(reference: str) -> Any:
    """``package.module:attribute`` (dots after the colon walk attributes).

    :raises JobError: it does not import, or has no such attribute.
    """
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise JobError(f"function must be 'package.module:function', not {reference!r}", field="function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise JobError(f"function {reference!r}: module {module_name!r} does not import: "
                       f"{type(exc).__name__}: {exc}", field="function") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise JobError(f"function {reference!r}: {module_name} has no {attribute!r}", field="function") from None
    if not callable(target):
        raise JobError(f"function {reference!r} is a {type(target).__name__}, not a callable", field="function")
    return target


def call_reference(reference: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    result = resolve(reference)(*args, **kwargs)
    return result  # a coroutine is awaited by the worker's runtime


def call_pickled(payload: bytes) -> Any:
    """Run what the Python client pickled: ``(fn, args, kwargs)``."""
    import cloudpickle

    fn, args, kwargs = cloudpickle.loads(payload)
    return fn(*args, **kwargs)


def run_module(module: str, argv: Sequence[str], timeout: float | None) -> dict[str, Any]:
    """``python -m module argv...`` in a fresh interpreter that sees what this worker
    sees (its sys.path); its output goes into the job's log as a command's does."""
    path = os.pathsep.join(p for p in sys.path if p)
    return run_command([sys.executable, "-m", module, *argv], False, {"PYTHONPATH": path}, None, timeout)


def run_code(source: str, filename: str = "<job>") -> Any:
    """Run Python source; its ``result`` variable, if it sets one, is the job's result."""
    namespace: dict[str, Any] = {"__name__": "__job__"}
    with _output_to_log():
        exec(compile(source, filename, "exec"), namespace)  # the point of the code task type
    return namespace.get("result")


def run_command(argv: Sequence[str] | str, shell: bool, env: Mapping[str, str] | None, cwd: str | None,
                timeout: float | None) -> dict[str, Any]:
    """Run a command; each line it writes goes to the job's log as it comes. A non-zero
    exit fails the job (the error carries the code)."""
    full_env = {**os.environ, **env} if env else None
    with subprocess.Popen(argv, shell=shell, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as proc:  # closes the pipes
        # Each reader runs in a copy of this call's context, where task.log knows the call.
        readers = [threading.Thread(target=contextvars.copy_context().run, args=(_pump, stream, name), daemon=True)
                   for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for reader in readers:
            reader.start()
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            proc.wait()
            raise WorkFailed(f"command ran past its timeout of {timeout:g} s and was killed") from None
        finally:
            for reader in readers:
                reader.join(5)
    if code != 0:
        raise WorkFailed(f"command exited with {code}" if code > 0 else f"command was killed by signal {-code}")
    return {"exit_code": code}


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill a command and what it started (a shell's own children, say): they share this
    worker's process group, which ends only with the worker."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    proc.kill()
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _pump(stream: IO[str] | None, name: str) -> None:
    assert stream is not None
    # A pipe closed under it ends it: a command's background child may hold the pipe open
    # after the command exits, and the command's end is what counts.
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            task.log(line.rstrip("\n"), level="info" if name == "stdout" else "warning", stream=name)


def http_request(method: str, url: str, headers: Mapping[str, str], body: str | None, expect: Sequence[int],
                 timeout: float | None) -> dict[str, Any]:
    """One HTTP request; a status outside ``expect`` fails the job."""
    request = urllib.request.Request(url, data=body.encode() if body is not None else None,
                                     headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout or 60) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise WorkFailed(f"{method} {url} failed: {getattr(exc, 'reason', exc)}") from None
    if status not in expect:
        raise WorkFailed(f"{method} {url} answered {status}, expected {', '.join(map(str, expect))}: {text[:200]}")
    return {"status": status, "body": text}


class _LogWriter(io.TextIOBase):
    """A text stream whose lines go to the job's log."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            task.log(line, level="info" if self.stream == "stdout" else "warning", stream=self.stream)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.write("\n")


@contextlib.contextmanager
def _output_to_log() -> Iterator[None]:
    """What the job prints goes to its log, line by line."""
    out, err = _LogWriter("stdout"), _LogWriter("stderr")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        out.flush()
        err.flush()
