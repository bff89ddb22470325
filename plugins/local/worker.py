"""The kernel's side of one local worker process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from kernel.packages import service_packages
from microkernel.services.execution_manager.errors import WorkerCrashedError, WorkerStartError
from microkernel.services.execution_manager.executors import (
    Attempt,
    ErrorInfo,
    FrameStream,
    Verdict,
    WorkerBase,
    WorkerInfo,
    WorkerState,
    judge_liveness,
)
from microkernel.services.execution_manager.wire import PipeKernelSide, protocol as p

from .process import BEGAN, BOOT_ENV

_S = WorkerState


def _shared_page(name: str) -> int:
    """A file descriptor of a small memory-backed file, shared with the worker."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"began-{name}")
    else:  # no memfd (not Linux): an unlinked temporary file does the same
        import tempfile

        handle, path = tempfile.mkstemp(prefix=f"began-{name}-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, BEGAN.size)
    return fd


def describe_exit(returncode: int | None) -> str:
    """'exited with code 1', 'killed by signal SIGKILL'..."""
    if returncode is None:
        return "disconnected"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exited with code {returncode}"


def _end_group(pid: int) -> None:
    """Kill what a worker left behind once it has exited: it led its own process group, so
    the commands and processes its calls started are in it (unless they left it), and
    none may outlive it: a cancelled shell job's command, say, or a call's subprocess."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class LocalWorker(WorkerBase):
    """A worker process on this machine, talking frames over a socket pair.

    Options: ``startTimeout`` (seconds to register, default 30); ``python`` (the
    interpreter to run workers with, default: the kernel's); ``killGrace`` (seconds
    between SIGTERM and SIGKILL when a running call is aborted, default 1); ``labels``
    (extra resources every worker offers, e.g. ``{"gpu": 1}``). A worker offers one CPU
    and the machine's memory.
    """

    node_type = "local"
    knows_begun = True  # its worker records each call it begins on a page that outlives it

    def __init__(self, worker_id: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(worker_id, options)
        self.pid: int | None = None
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stream: FrameStream | None = None
        self._conn: PipeKernelSide | None = None
        self._keeping = bool(self.options.get("keepAnswers"))  # a node agent relays answers as they came
        self._hello: asyncio.Future[p.Hello] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._stopping = False
        self._exit_reason: str | None = None
        self._abort_note: str | None = None
        self._cancelling: set[int] = set()  # asked to drop, not yet confirmed
        self._suspect_since: float | None = None  # first seen stopped (check_alive)
        self._began: mmap.mmap | None = None  # the id of the call the worker began last (shared)
        self._pinged = 0.0  # when the last ping went out (check_alive)
        self._offer = self.offers(self.options)

    @classmethod
    def offers(cls, options: Mapping[str, Any]) -> Mapping[str, float]:
        import psutil  # kernel side only; workers never import this module

        return {"cpu": 1.0, "memory": float(psutil.virtual_memory().total), **options.get("labels", {})}

    def info(self) -> WorkerInfo:
        return WorkerInfo(pid=self.pid, width=1, exit_reason=self._exit_reason, exit_code=self.returncode,
                          resources=self._offer)

    # -- start ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.set_state(_S.REGISTERING)
        timeout = float(self.options.get("startTimeout", 30.0))
        ours, theirs = socket.socketpair()
        began_fd = _shared_page(self.id)
        self._began = mmap.mmap(began_fd, BEGAN.size)
        boot = {
            "worker_id": self.id,
            "sys_path": sys.path,
            "packages": service_packages(),
            "kernel_pid": os.getpid(),
            "began_fd": began_fd,
        }
        env = {**os.environ, BOOT_ENV: json.dumps(boot)}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                # -P: `python -m` would put the current folder first on the path, so that an
                # app's kernel.py replaced our package in every worker; the app's folder
                # comes back, after ours, with the kernel's sys.path in the boot message.
                self.options.get("python", sys.executable), "-P", "-m", "microkernel.plugins.local.process",
                str(theirs.fileno()),
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), began_fd), env=env,
                start_new_session=True,  # its own process group: what it starts ends with it (_end_group)
            )
        except OSError as exc:
            ours.close()
            self._began.close()
            self._began = None
            self.set_state(_S.FAILED)
            raise WorkerStartError(f"worker {self.id}: cannot start a process: {exc}") from exc
        finally:
            theirs.close()
            os.close(began_fd)  # the mapping keeps the page
        self.pid = self._proc.pid
        self._hello = loop.create_future()
        self._exited = loop.create_future()
        conn = self._conn = PipeKernelSide(peer=f"worker {self.id} (pid {self.pid})", keep_answers=self._keeping)
        _, stream = await loop.connect_accepted_socket(
            lambda: FrameStream(conn, self._on_event, self._on_lost), ours
        )
        self._stream = stream
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._hello)
        except (TimeoutError, WorkerCrashedError, p.ProtocolError) as exc:
            await self._kill()
            if isinstance(exc, TimeoutError):
                why = f"did not register within {timeout:g} s"
            elif isinstance(exc, p.ProtocolError):  # another release's worker, named with both versions
                why = f"was refused: {exc.reason}"
            else:
                why = f"{describe_exit(self.returncode)} before registering"
            if self.state != _S.FAILED:
                self.set_state(_S.FAILED)
            raise WorkerStartError(f"worker {self.id} (pid {self.pid}) {why}") from None
        self.set_state(_S.AVAILABLE)

    # -- calls ------------------------------------------------------------------------

    def submit(self, attempt: Attempt) -> None:
        stream = self._stream
        self._check_accepting(connected=stream is not None and not stream.closed)
        assert stream is not None
        stream.write(p.frame(p.Call(attempt.id, attempt.kind, attempt.payload, attempt.soft_timeout, attempt.attempt)))
        self._hold(attempt)  # after the write: the worker starts while this runs

    def cancel(self, task_id: int) -> bool:
        """Ask the worker to drop the call; it confirms (CANCELLED, and the call's future
        is cancelled) unless it began it already (then it ends as usual)."""
        stream = self._stream
        if stream is None or stream.closed or task_id not in self.inflight or task_id in self._cancelling:
            return False
        self._cancelling.add(task_id)
        stream.write(p.frame(p.Cancel(task_id)))
        return True

    def stop_running(self, task_id: int, note: str) -> bool:
        if self._proc is None or self._proc.returncode is not None:
            return False
        self._abort_note = f"stopped: {note}"
        self._proc.terminate()
        grace = float(self.options.get("killGrace", 1.0))
        asyncio.get_running_loop().call_later(grace, self._kill_if_alive)
        return True

    def check_alive(self, status: str | None, timeout: float) -> str | None:
        """Carry out :func:`~microkernel.services.execution_manager.scheduling.policy.judge_liveness`'s
        verdict: ping, mark UNHEALTHY while in doubt, or kill the process (the pool
        replaces the worker) and say why."""
        stream, proc = self._stream, self._proc
        if stream is None or proc is None or proc.returncode is not None or self.is_closed:
            return None
        now = time.monotonic()
        verdict, why = judge_liveness(status, busy=bool(self.inflight), heard=stream.heard, pinged=self._pinged,
                                      suspect_since=self._suspect_since, now=now, timeout=timeout)
        if verdict is Verdict.PING:
            self._pinged = now
            stream.write(p.frame(p.Heartbeat(0.0, 0, 0)))  # answered at once by an idle worker
        if verdict is Verdict.ALIVE or verdict is Verdict.PING:
            if self._suspect_since is not None:
                self._suspect_since = None
                if self.state == _S.UNHEALTHY:
                    self.set_state(_S.AVAILABLE)  # it came back (SIGCONT)
            return None
        if self._suspect_since is None:
            self._suspect_since = now
            if self.state in (_S.AVAILABLE, _S.RUNNING):
                self.set_state(_S.UNHEALTHY)  # no new calls while it is in doubt
        if verdict is Verdict.SUSPECT:
            return None
        self._abort_note = f"declared dead: {why}"
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        stream.close()
        return why

    def _kill_if_alive(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()  # it ignored SIGTERM

    async def tell(self, payload: bytes) -> list[tuple[bool, str]]:
        stream = self._stream
        self._check_accepting(connected=stream is not None and not stream.closed)
        assert stream is not None
        return await self._ask(lambda request_id: stream.write(p.frame(p.Tell(request_id, payload))))

    def _on_event(self, event: p.Event) -> None:
        if self._cancelling and type(event) in (p.Result, p.Error, p.Cancelled):
            self._cancelling.discard(event.call_id)  # type: ignore[union-attr]
        if type(event) is p.Result:
            call = self.inflight.get(event.call_id)
            if call is not None:  # else an attempt already given up (or cancelled): never delivered twice
                call.ran = event.ran or None
                self._finish(call, (True, event.payload))
            if self._keeping:
                self._forget_answer(event.call_id)
        elif type(event) is p.Error:
            call = self.inflight.get(event.call_id)
            if call is not None:
                call.ran = event.ran or None
                self._finish(call, (False, ErrorInfo(event.type_name, event.message, event.traceback, event.exception)))
            if self._keeping:
                self._forget_answer(event.call_id)
        elif type(event) is p.Cancelled:
            self._drop(event.call_id)
        elif type(event) is p.Progress or type(event) is p.Log or type(event) is p.Request:
            self.report_traffic(event, self._respond)
        elif type(event) is p.Told:  # (after the answers to calls: those come with every call)
            self._answered(event.request_id, event.replies)
        elif type(event) is p.Hello and self._hello is not None and not self._hello.done():
            self._hello.set_result(event)

    def answer_frame(self, task_id: int) -> bytes | None:
        """With the option ``keepAnswers``: the RESULT or ERROR frame of ``task_id`` as the
        worker sent it, once, while the call's reply is being followed (a node agent
        forwards it to the kernel without encoding it again)."""
        conn = self._conn
        return conn.answer_frame(task_id) if conn is not None else None

    def _forget_answer(self, task_id: int) -> None:
        if self._conn is not None:
            self._conn.answer_frame(task_id)  # not taken (not relayed, or given up): dropped

    def _respond(self, request_id: int, ok: bool, payload: bytes) -> None:
        if self._stream is not None and not self._stream.closed:
            self._stream.write(p.frame(p.Response(request_id, ok, payload)))

    # -- end --------------------------------------------------------------------------

    def _on_lost(self, exc: BaseException | None) -> None:
        if self.state in (_S.AVAILABLE, _S.RUNNING):
            self.set_state(_S.UNHEALTHY)  # no call goes to it while it is reaped
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(exc if isinstance(exc, p.ProtocolError) else WorkerCrashedError("lost"))
            self._hello.exception()  # retrieved here; start() reports it
        asyncio.get_running_loop().create_task(self._reap(exc))

    async def _reap(self, exc: BaseException | None) -> None:
        """The connection ended: collect the exit status, fail what was in flight."""
        assert self._proc is not None
        try:
            async with asyncio.timeout(2.0):
                self.returncode = await self._proc.wait()
        except TimeoutError:  # the socket broke but the process lingers: end it
            self._proc.kill()
            self.returncode = await self._proc.wait()
        _end_group(self._proc.pid)
        reason = describe_exit(self.returncode)
        if isinstance(exc, p.ProtocolError):
            reason = f"broke the protocol ({exc.reason})"
        elif self._abort_note:
            reason = f"{reason} ({self._abort_note})"
        self._exit_reason = reason
        where = f"worker {self.id} (pid {self.pid})"
        how = "was stopped" if self._stopping else reason

        # Leave the accepting states first: failing a call lets the pool place queued
        # calls, and none may land on this dead worker.
        if self.state not in (_S.FAILED, _S.TERMINATED):
            self.set_state(_S.TERMINATED if self._stopping else _S.FAILED)
        self._crash_all(where, how, pid=self.pid, exitcode=self.returncode, started=self._began_by_then(), exact=True)
        self._unanswered(how)
        if self._began is not None:  # read for the last time: its descriptor goes now, not at garbage collection
            self._began.close()
            self._began = None
        assert self._exited is not None
        if not self._exited.done():
            self._exited.set_result(None)

    def _began_by_then(self) -> Callable[[Attempt], bool]:
        """Which calls held had begun when the worker ended: it writes each call's id to a
        shared page as it begins one (calls begin in the order sent), so the page says
        exactly, even after SIGKILL, and the rest run elsewhere at no cost."""
        last = BEGAN.unpack_from(self._began, 0)[0] if self._began is not None else -1
        order = list(self.inflight)
        upto = order.index(last) if last in order else -1  # not held: it answered; none after it began
        begun = set(order[: upto + 1])
        return lambda call: call.id in begun

    async def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        if self._stream is not None:
            self._stream.close()
        if self._exited is not None:
            await self._exited

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        self._stopping = True
        if self._stream is None or self._proc is None:
            self.set_state(_S.TERMINATED)
            return
        await self._let_finish(drain, timeout)
        if not self._stream.closed:
            self._stream.write(p.frame(p.Shutdown(False)))
        assert self._exited is not None
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._exited)
        except TimeoutError:
            await self._kill()
        if self.state != _S.TERMINATED:
            self.set_state(_S.TERMINATED)
