"""The child process of a :class:`~.worker.SubprocessWorker`: it speaks the pipe
protocol on the socket it is given and runs each call through the seam's
:class:`Runtime`, in order, on one thread, while this thread keeps reading (a
cancel, a request's answer, a ping)."""

from __future__ import annotations

import os
import platform
import queue
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from microkernel.services.execution_manager.executors import Runtime
from microkernel.services.execution_manager.wire import PipeWorkerSide, protocol as p


class Child:
    def __init__(self, sock: socket.socket, worker_id: str) -> None:
        self.sock = sock
        self.conn = PipeWorkerSide()
        self.sending = threading.Lock()
        self.calls: queue.Queue[p.Call | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.answers: dict[int, tuple[threading.Event, list[tuple[bool, bytes]]]] = {}
        self.requests = iter(range(1, 1 << 62))
        self.runtime = Runtime(worker_id, self)

    def send(self, message: Any) -> None:
        with self.sending:
            self.sock.sendall(self.conn.send(message))

    # -- the CallChannel the runtime reports through (any thread) --------------------

    def progress(self, task_id: int, fraction: float, message: str) -> None:
        self.send(p.Progress(task_id, fraction, message))

    def log(self, task_id: int, level: str, message: str, fields: Mapping[str, Any]) -> None:
        self.send(p.Log(task_id, level, message, dict(fields)))

    def request(self, task_id: int, route: str, payload: bytes) -> tuple[bool, bytes]:
        request_id, done = next(self.requests), threading.Event()
        answer: list[tuple[bool, bytes]] = []
        self.answers[request_id] = (done, answer)
        self.send(p.Request(request_id, task_id, route, payload))
        done.wait()
        return answer[0]

    # -- the two threads ---------------------------------------------------------------

    def run_calls(self) -> None:
        while (call := self.calls.get()) is not None:
            if call.call_id in self.cancelled:  # dropped before it began, as the kernel asked
                self.cancelled.discard(call.call_id)
                self.send(p.Cancelled(call.call_id))
                continue
            began = time.perf_counter()
            ok, data = self.runtime.execute(call.kind, call.payload, call.call_id, call.attempt)
            ran = time.perf_counter() - began
            if ok:
                self.send(p.Result(call.call_id, data, ran))
            else:
                self.send(p.Error(call.call_id, data.type_name, data.message, data.traceback, data.exception, ran))

    def read(self) -> None:
        with self.sending:
            self.sock.sendall(self.conn.hello(self.runtime.worker_id, os.getpid(), platform.python_version()))
        while data := self.sock.recv(1 << 16):
            for event in self.conn.receive_data(data):
                if type(event) is p.Call:
                    self.calls.put(event)
                elif type(event) is p.Cancel:
                    self.cancelled.add(event.call_id)
                elif type(event) is p.Response:
                    done, answer = self.answers.pop(event.request_id, (None, []))
                    if done is not None:
                        answer.append((event.ok, event.payload))
                        done.set()
                elif type(event) is p.Heartbeat:
                    self.send(p.Heartbeat(0.0, 0, 0))
                elif type(event) is p.Shutdown:
                    self.calls.put(None)
                    return
        self.calls.put(None)  # the kernel went away


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    child = Child(sock, sys.argv[2])
    runner = threading.Thread(target=child.run_calls, name="calls")
    runner.start()
    child.read()
    runner.join()
    sock.close()


if __name__ == "__main__":
    main()
