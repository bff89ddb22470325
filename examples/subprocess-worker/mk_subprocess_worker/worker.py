"""The kernel's side of a ``subprocess`` worker: a child process (:mod:`.child`) on a
socket pair, spoken to with the wire's pipe protocol through the seam's
:class:`FrameStream`; the seam's :class:`Worker` base keeps the books."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from microkernel.services.execution_manager.errors import WorkerStartError
from microkernel.services.execution_manager.executors import (
    Attempt,
    ErrorInfo,
    FrameStream,
    WorkerBase,
    WorkerInfo,
    WorkerState,
)
from microkernel.services.execution_manager.wire import PipeKernelSide, protocol as p


class SubprocessWorker(WorkerBase):
    """Runs its calls, one after another, in a child process of its own. Options:
    ``startTimeout`` (seconds, 30)."""

    node_type = "subprocess"
    knows_begun = False  # a death fails every call held as possibly begun

    def __init__(self, worker_id: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(worker_id, options)
        self._proc: asyncio.subprocess.Process | None = None
        self._stream: FrameStream | None = None
        self._hello: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._why = ""  # why it ended, when it was ended on purpose
        self._stopped_since: float | None = None
        self._exit_reason: str | None = None

    @classmethod
    def offers(cls, options: Mapping[str, Any]) -> Mapping[str, float]:
        return {"cpu": 1.0}

    def info(self) -> WorkerInfo:
        proc = self._proc
        return WorkerInfo(pid=proc.pid if proc else None, width=1, exit_reason=self._exit_reason,
                          exit_code=proc.returncode if proc else None, resources={"cpu": 1.0})

    async def start(self) -> None:
        self.set_state(WorkerState.REGISTERING)
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mk_subprocess_worker.child", str(theirs.fileno()), self.id,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            self.set_state(WorkerState.FAILED)
            raise WorkerStartError(f"worker {self.id}: cannot start its process: {exc}") from exc
        finally:
            theirs.close()
        self._hello, self._ended = loop.create_future(), loop.create_future()
        conn = PipeKernelSide(peer=f"worker {self.id}")
        _, self._stream = await loop.connect_accepted_socket(lambda: FrameStream(conn, self._on_event, self._on_lost),
                                                             ours)
        timeout = float(self.options.get("startTimeout", 30.0))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._hello)
        except (TimeoutError, p.ProtocolError, ConnectionError) as exc:
            await self._end("did not register")
            raise WorkerStartError(f"worker {self.id} (pid {self._proc.pid}) did not register: "
                                   f"{exc or f'nothing within {timeout:g} s'}") from None
        self.set_state(WorkerState.AVAILABLE)

    def submit(self, attempt: Attempt) -> None:
        stream = self._stream
        self._check_accepting(connected=stream is not None and not stream.closed)
        assert stream is not None
        stream.write(p.frame(p.Call(attempt.id, attempt.kind, attempt.payload, attempt.soft_timeout, attempt.attempt)))
        self._hold(attempt)

    def cancel(self, task_id: int) -> bool:
        """Asks the child; it confirms with CANCELLED unless it began the call."""
        if task_id not in self.inflight or self._stream is None or self._stream.closed:
            return False
        self._stream.write(p.frame(p.Cancel(task_id)))
        return True

    def stop_running(self, task_id: int, note: str) -> bool:
        """The call runs in the child: end the child (the pool starts another)."""
        self._why = note
        asyncio.get_running_loop().create_task(self._end(note))
        return True

    def check_alive(self, status: str | None, timeout: float) -> str | None:
        """Stopped (SIGSTOP) or a zombie: not available at once, ended past ``timeout``."""
        if self.is_closed or self._proc is None or self._proc.returncode is not None:
            return None
        if status not in ("stopped", "tracing-stop", "zombie"):
            if self._stopped_since is not None and self.state == WorkerState.UNHEALTHY:
                self.set_state(WorkerState.AVAILABLE if not self.inflight else WorkerState.RUNNING)
            self._stopped_since = None
            return None
        now = time.monotonic()
        if self._stopped_since is None:
            self._stopped_since = now
            if self.is_available:
                self.set_state(WorkerState.UNHEALTHY)
        if now - self._stopped_since < timeout:
            return None
        why = f"its process was {status} for {now - self._stopped_since:.1f} s"
        self._why = why
        asyncio.get_running_loop().create_task(self._end(why))
        return why

    async def stop(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        if not self._begin_stop():
            return
        await self._let_finish(drain, timeout)
        if self._stream is not None and not self._stream.closed:
            self._stream.write(p.frame(p.Shutdown(False)))
        if self._ended is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._ended)
        await self._end("was stopped")
        if self.state != WorkerState.TERMINATED:
            self.set_state(WorkerState.TERMINATED)

    # -- events from the child -------------------------------------------------------------

    def _on_event(self, event: p.Event) -> None:
        if isinstance(event, p.Result | p.Error):
            call = self.inflight.get(event.call_id)
            if call is not None:
                call.ran = event.ran or None
                if isinstance(event, p.Result):
                    self._finish(call, (True, event.payload))
                else:
                    self._finish(call, (False, ErrorInfo(event.type_name, event.message, event.traceback,
                                                         event.exception)))
        elif isinstance(event, p.Cancelled):
            self._drop(event.call_id)
        elif isinstance(event, p.Progress | p.Log | p.Request):
            self.report_traffic(event, self._respond)
        elif isinstance(event, p.Hello) and self._hello is not None and not self._hello.done():
            self._hello.set_result(None)

    def _respond(self, request_id: int, ok: bool, payload: bytes) -> None:
        if self._stream is not None and not self._stream.closed:
            self._stream.write(p.frame(p.Response(request_id, ok, payload)))

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(exc or ConnectionError("the child closed its socket"))
            self._hello.exception()
        asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        assert self._proc is not None
        returncode = await self._proc.wait()
        stopping = self.state in (WorkerState.DRAINING, WorkerState.TERMINATED)
        self._exit_reason = self._why or ("stopped" if stopping else f"exited with code {returncode}")
        if not self.is_closed:
            self.set_state(WorkerState.TERMINATED if stopping else WorkerState.FAILED)
        self._crash_all(f"worker {self.id} (pid {self._proc.pid})", self._exit_reason, pid=self._proc.pid,
                        exitcode=returncode)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def _end(self, why: str) -> None:
        """End the child now and wait until everything it held has failed."""
        self._why = self._why or why
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies only once continued
        if self._stream is not None:
            self._stream.close()
        if self._ended is not None:
            await asyncio.shield(self._ended)
