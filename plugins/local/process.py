"""The worker process: ``python -P -m microkernel.plugins.local.process FD``.

A blocking loop on one socket: read CALL frames, run them one at a time in this
thread, write the replies. Replies of short calls are batched (up to about a
millisecond) so that a stream of tiny calls costs few system calls. A watchdog thread
exits the process as soon as the kernel's end of the socket closes, even while a
long call runs, so no worker outlives its kernel, however the kernel ended.

A running call reaches the kernel through :mod:`kernel.task`: progress and log frames
go out at once; a request blocks only that call, reading the socket for its answer
and keeping any calls that arrive meanwhile for the main loop. A cancel is settled as
soon as it is read: a call not begun never begins, and the kernel hears so (CANCELLED);
while a call runs long, a watcher thread does the reading, so the kernel can take
back calls held behind it at once.
"""

from __future__ import annotations

import gc
import itertools
import json
import mmap
import os
import platform
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kernel import task
from kernel.errors import RequestError
from kernel.packages import install_finder
from microkernel.services.execution_manager.errors import SoftTimeoutError
from microkernel.services.execution_manager.executors import Reply, Runtime
from microkernel.services.execution_manager.wire import PipeWorkerSide, protocol as p

BOOT_ENV = "MICROKERNEL_WORKER_BOOT"
BEGAN = struct.Struct("<q")  # the id of the call begun last, on a page shared with the kernel
_BATCH_SECONDS = 0.001
_WATCH_SECONDS = 0.01  # how soon a cancel is settled while a call runs long


def _watch_kernel(sock: socket.socket, kernel_pid: int) -> None:
    """Exit at once when the kernel goes away (its socket end closes), and take what
    this worker started along (the kernel is not there to)."""

    def run() -> None:
        rdhup = getattr(select, "POLLRDHUP", 0)
        if hasattr(select, "poll") and rdhup:
            poller = select.poll()
            poller.register(sock.fileno(), rdhup)
            gone = rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL
            while True:
                for _fd, ev in poller.poll():
                    if ev & gone:
                        _exit_with_group()
        while True:  # no POLLRDHUP (not Linux): poll the parent's liveness
            time.sleep(0.5)
            try:
                os.kill(kernel_pid, 0)
            except ProcessLookupError:
                _exit_with_group()

    threading.Thread(target=run, name="kernel-watchdog", daemon=True).start()


def _exit_with_group() -> None:
    """Exit, and kill the process group this worker leads (what its calls started)."""
    if hasattr(os, "killpg") and os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)  # this process included
    os._exit(0)


class _SoftTimeout:
    """Raises SoftTimeoutError in the running call when its SIGALRM comes."""

    armed = False
    seconds = 0.0

    @classmethod
    def fire(cls, _signum: int, _frame: object) -> None:
        if cls.armed:  # never outside the call it was set for
            cls.armed = False
            raise SoftTimeoutError(f"the call ran past its soft timeout of {cls.seconds:g} s")

    @classmethod
    def run(cls, execute: Callable[[int, bytes, int, int], Reply], ev: p.Call) -> Reply:
        cls.seconds, cls.armed = ev.soft_timeout, True
        signal.setitimer(signal.ITIMER_REAL, ev.soft_timeout)
        try:
            return execute(ev.kind, ev.payload, ev.call_id, ev.attempt)
        finally:
            cls.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


class _Link:
    """The worker's end of the socket: sends from any thread of a call, and every read.

    Reads happen on the main loop between calls, in a call's request while it waits for
    its answer (``kernel.task``), and on the cancel watcher while a call runs long; all
    go through :meth:`take` under one lock. Calls received and not begun are
    :attr:`pending`: a cancel and the main loop's start race for each one, settled by the
    pop of one dict (atomic), so a cancel is confirmed (CANCELLED) only for a call that
    will never begin.
    """

    def __init__(self, sock: socket.socket, conn: PipeWorkerSide) -> None:
        self.sock = sock
        self.conn = conn
        self.out: list[bytes] = []  # replies waiting for the batch to be written
        self.unseen: list[p.Event] = []  # events read off the main loop, for it to see
        # Calls received and not begun, by id: the frame to begin it from. A call taken back
        # and sent again has two frames; only the newest may begin it, in the kernel's order.
        self.pending: dict[int, p.Call] = {}
        self.running_since: float | None = None  # when the main loop began the call it runs
        self.read_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._answers: dict[int, p.Response] = {}
        self._ids = itertools.count(1)
        self.tells: list[p.Tell] = []  # operators' messages, for the main loop between calls

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def flush(self) -> None:
        out = self.out
        if out:
            self.send(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def take(self, data: bytes) -> list[p.Event]:
        """Parse ``data`` (under :attr:`read_lock`): calls become pending, cancels are
        settled at once, answers to requests are kept; the rest is returned."""
        events = self.conn.receive_data(data)
        kept: list[p.Event] = []
        pending = self.pending
        for ev in events:
            if type(ev) is p.Call:
                pending[ev.call_id] = ev
                kept.append(ev)
            elif type(ev) is p.Cancel:
                # dict.pop is atomic: this and the main loop's begin() cannot both win a call
                if pending.pop(ev.call_id, None) is not None:  # not begun: it never will
                    self.send(p.frame(p.Cancelled(ev.call_id)))
            elif type(ev) is p.Response:
                self._answers[ev.request_id] = ev
            elif type(ev) is p.Heartbeat:  # the kernel asks whether this idle worker still answers
                self.send(p.frame(p.Heartbeat(0.0, 0, len(pending))))
            elif type(ev) is p.Tell:
                self.tells.append(ev)  # the main loop answers it before the next call
            else:
                kept.append(ev)
        return kept

    def answer_tells(self, runtime: Runtime) -> None:
        """Hand operators' messages to the pinned instances (the main loop, between calls)."""
        while self.tells:
            tell = self.tells.pop(0)
            self.send(p.frame(p.Told(tell.request_id, runtime.tell(tell.payload))))

    def next_batch(self) -> list[p.Event] | None:
        """What the main loop runs next: the events others read for it, else the next
        read (blocking); None at the end of the stream."""
        with self.read_lock:
            if self.unseen:
                events = list(self.unseen)
                self.unseen.clear()
                return events
            data = self.sock.recv(max(65536, self.conn.pending()))  # a large frame in one read
            return self.take(data) if data else None

    def meanwhile(self) -> list[p.Event]:
        """What came while a call waited behind another (cancels, mostly): what its
        requests and the watcher read, and what waits on the socket."""
        with self.read_lock:
            more = list(self.unseen)
            self.unseen.clear()
        return more + self.read_ready()

    def read_ready(self) -> list[p.Event]:
        """The events already waiting on the socket, without blocking."""
        with self.read_lock:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return []
            if not data:
                return []  # the end of the stream is seen by the next blocking read
            return self.take(data)

    def watch_cancels(self, every: float) -> None:
        """While a call runs longer than ``every`` s, read what arrives, so a cancel of
        a call held behind it is settled now, not when the call ends (a thread)."""
        clock = time.perf_counter
        while True:
            time.sleep(every)
            since = self.running_since
            if since is None or clock() - since < every or not self.read_lock.acquire(blocking=False):
                continue
            try:
                if self.running_since is not None:
                    try:
                        data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    if data:
                        self.unseen.extend(self.take(data))
            finally:
                self.read_lock.release()

    # -- runtime.CallChannel ---------------------------------------------------------

    def progress(self, task_id: int, fraction: float, message: str) -> None:
        self.send(p.frame(p.Progress(task_id, fraction, message)))

    def log(self, task_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        self.send(p.frame(p.Log(task_id, level, message, dict(fields))))

    def request(self, task_id: int, route: str, payload: bytes) -> tuple[bool, bytes]:
        rid = next(self._ids)
        self.flush()  # earlier calls' results must not wait for this answer
        self.send(p.frame(p.Request(rid, task_id, route, payload)))
        with self.read_lock:
            while rid not in self._answers:
                data = self.sock.recv(max(65536, self.conn.pending()))
                if not data:
                    raise RequestError(f"the kernel went away before answering request {route!r}")
                self.unseen.extend(self.take(data))  # calls and the like: the main loop's
        answer = self._answers.pop(rid)
        return answer.ok, answer.payload


def _no_mark(task_id: int) -> None:
    """Without a shared page (an old kernel), what began is not recorded."""


def serve(sock: socket.socket, worker_id: str, began: mmap.mmap | None = None) -> None:
    conn = PipeWorkerSide()
    link = _Link(sock, conn)
    runtime = Runtime(worker_id, link)
    sock.sendall(conn.hello(worker_id, os.getpid(), platform.python_version()))
    threading.Thread(target=link.watch_cancels, args=(_WATCH_SECONDS,), name="cancel-watcher", daemon=True).start()
    frame, execute, pending = p.frame, runtime.execute, link.pending
    mark: Callable[[int], None] = partial(BEGAN.pack_into, began, 0) if began is not None else _no_mark
    Result, Error = p.Result, p.Error
    clock = time.perf_counter
    out, unseen = link.out, link.unseen
    tells = link.tells
    while (events := link.next_batch()) is not None:
        if tells:
            link.answer_tells(runtime)
        flushed = read_at = clock()
        i = 0
        while i < len(events):
            ev = events[i]
            i += 1
            if type(ev) is p.Call:
                if unseen or clock() - read_at > _BATCH_SECONDS:  # it waited behind another call
                    events.extend(link.meanwhile())
                    read_at = clock()
                if tells:  # ahead of the calls queued here
                    link.answer_tells(runtime)
                claimed = pending.pop(ev.call_id, None)  # begin(), inlined: the hot path
                if claimed is not ev:
                    if claimed is not None:  # a stale frame: the call was sent again, and begins from there
                        pending[ev.call_id] = claimed
                    continue  # cancelled before it began (and confirmed): the kernel runs it elsewhere
                mark(ev.call_id)  # the kernel reads it if this process dies: what had begun
                link.running_since = read_at if flushed < read_at else flushed  # at or before its start
                began_at = clock()
                if ev.soft_timeout:
                    ok, reply = _SoftTimeout.run(execute, ev)
                else:
                    ok, reply = execute(ev.kind, ev.payload, ev.call_id, ev.attempt)
                link.running_since = None
                now = clock()
                # How long it ran, here: the kernel's own view adds transit and the wait
                # behind calls sent ahead, and would count them as the call's duration.
                out.append(frame(Result(ev.call_id, reply, now - began_at) if ok
                                 else Error(ev.call_id, reply.type_name, reply.message, reply.traceback,
                                            reply.exception, now - began_at)))  # reply: an ErrorInfo
                if now - flushed > _BATCH_SECONDS:
                    link.flush()
                    flushed = now
            elif type(ev) is p.Shutdown:
                link.flush()
                return
        link.flush()


def main() -> None:
    boot = json.loads(os.environ.pop(BOOT_ENV))
    # Ctrl-C in a terminal reaches the whole process group; the kernel decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _SoftTimeout.fire)
    sys.path[:] = boot["sys_path"]
    install_finder(boot["packages"])
    task.forward_logging()  # logging inside calls lands in the kernel's log, with their ids
    sock = socket.socket(fileno=int(sys.argv[1]))
    _watch_kernel(sock, boot["kernel_pid"])
    gc.freeze()  # what booting made stays out of each collection's walk (as in the kernel)
    began = mmap.mmap(boot["began_fd"], BEGAN.size) if boot.get("began_fd") is not None else None
    if began is not None:
        os.close(boot["began_fd"])
    try:
        serve(sock, boot["worker_id"], began)
    except (ConnectionError, p.ProtocolError):
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
