"""The worker process: ``python -m plugins.local.worker FD``.

A blocking loop on one socket: read CALL frames, run them one at a time in this
thread, write the replies. Replies of short calls are batched (up to about a
millisecond) so that a stream of tiny calls costs few system calls. A watchdog thread
exits the process as soon as the kernel's end of the socket closes, even while a
long call runs, so no worker outlives its kernel, however the kernel ended.
"""

from __future__ import annotations

import json
import os
import platform
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

from kernel import protocol as p
from kernel.errors import SoftTimeoutError
from kernel.packages import install_finder
from kernel.runtime import Runtime

BOOT_ENV = "MICROKERNEL_WORKER_BOOT"
_BATCH_SECONDS = 0.001


def _watch_kernel(sock: socket.socket, kernel_pid: int) -> None:
    """Exit at once when the kernel goes away (its socket end closes)."""

    def run() -> None:
        rdhup = getattr(select, "POLLRDHUP", 0)
        if hasattr(select, "poll") and rdhup:
            poller = select.poll()
            poller.register(sock.fileno(), rdhup)
            gone = rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL
            while True:
                for _fd, ev in poller.poll():
                    if ev & gone:
                        os._exit(0)
        while True:  # no POLLRDHUP (not Linux): poll the parent's liveness
            time.sleep(0.5)
            try:
                os.kill(kernel_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=run, name="kernel-watchdog", daemon=True).start()


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
    def run(cls, execute: Callable[[int, bytes], tuple[bool, object]], ev: p.Call) -> tuple[bool, object]:
        cls.seconds, cls.armed = ev.soft_timeout, True
        signal.setitimer(signal.ITIMER_REAL, ev.soft_timeout)
        try:
            return execute(ev.kind, ev.payload)
        finally:
            cls.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


def _read_ready(sock: socket.socket, conn: p.Connection) -> list[p.Event]:
    """The events already waiting on the socket, without blocking."""
    try:
        data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return []
    if not data:
        return []  # the end of the stream is seen by the next blocking read
    return conn.receive_data(data)


def serve(sock: socket.socket, worker_id: str) -> None:
    conn = p.Connection("worker")
    runtime = Runtime(worker_id)
    hello = p.Hello(p.PROTOCOL_VERSION, worker_id, os.getpid(), platform.python_version(), {})
    sock.sendall(conn.send(hello))
    recv, sendall, pack, execute = sock.recv, sock.sendall, p.pack, runtime.execute
    clock = time.perf_counter
    out: list[bytes] = []
    while True:
        data = recv(max(65536, conn.pending()))  # a large frame in one read
        if not data:
            return
        events = conn.receive_data(data)
        cancelled = {ev.call_id for ev in events if type(ev) is p.Cancel}
        flushed = read_at = clock()
        i = 0
        while i < len(events):
            ev = events[i]
            i += 1
            if type(ev) is p.Call:
                if clock() - read_at > _BATCH_SECONDS:
                    # It waited behind another call: take in what came meanwhile (cancels).
                    more = _read_ready(sock, conn)
                    read_at = clock()
                    if more:
                        events.extend(more)
                        cancelled.update(e.call_id for e in more if type(e) is p.Cancel)
                if ev.call_id in cancelled:
                    continue
                if ev.soft_timeout:
                    ok, reply = _SoftTimeout.run(execute, ev)
                else:
                    ok, reply = execute(ev.kind, ev.payload)
                out.append(pack((p.RESULT, ev.call_id, reply) if ok else (p.ERROR, ev.call_id, *reply)))
                now = clock()
                if now - flushed > _BATCH_SECONDS:
                    sendall(b"".join(out))
                    out.clear()
                    flushed = now
            elif type(ev) is p.Shutdown:
                if out:
                    sendall(b"".join(out))
                return
        if out:
            sendall(out[0] if len(out) == 1 else b"".join(out))
            out.clear()


def main() -> None:
    boot = json.loads(os.environ.pop(BOOT_ENV))
    # Ctrl-C in a terminal reaches the whole process group; the kernel decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _SoftTimeout.fire)
    sys.path[:] = boot["sys_path"]
    install_finder(boot["packages"])
    sock = socket.socket(fileno=int(sys.argv[1]))
    _watch_kernel(sock, boot["kernel_pid"])
    try:
        serve(sock, boot["worker_id"])
    except (ConnectionError, p.ProtocolError):
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
