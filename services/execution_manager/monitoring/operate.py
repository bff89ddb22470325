"""``kernel workers``, ``kernel worker ID`` and ``kernel revoke TASK_ID``: a running
kernel's workers, one worker, the operator's actions on it (drain, stop, restart), and
revoking a call, through its HTTP API.

Actions carry the admin token: ``--token-file``, else ``$MICROKERNEL_ADMIN_TOKEN``,
else ``admin.token`` in the kernel's data folder (which a kernel on this machine made on
its first start), so the verbs work out of the box beside the kernel.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from rich.console import Console

from kernel.commands import CommandFailed, RequestRefused
from kernel.tokens import data_dir, read_token

from ..settings import ADMIN_TOKEN_ENV as TOKEN_ENV, ADMIN_TOKEN_FILE
from .terminal import fetch, worker_detail, workers_table

ACTIONS = ("drain", "stop", "restart")


def admin_token(file: str | None) -> bytes:
    """The admin token: ``file``, else the environment, else the data folder's file.

    :raises ConfigError: none of them holds one (the message says where it looked).
    """
    if file is None and not os.environ.get(TOKEN_ENV, "").strip():
        made = data_dir() / ADMIN_TOKEN_FILE
        if made.exists():
            file = str(made)
    return read_token(TOKEN_ENV, file, what="admin token")


def _request(url: str, path: str, *, method: str = "GET", token: bytes | None = None,
             body: bytes | None = None) -> dict[str, Any]:
    target = url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token.decode()}"} if token is not None else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    data = body if body is not None else b"" if method == "POST" else None
    request = urllib.request.Request(target, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            said = json.load(exc).get("error", "")
        except (json.JSONDecodeError, AttributeError):
            said = ""
        raise RequestRefused(f"{target} answered {exc.code}: {said or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CommandFailed(f"no kernel answers at {url} ({getattr(exc, 'reason', exc)}); is `kernel run` going? "
                            "It prints its dashboard address when it starts") from None
    if not isinstance(data, dict):
        raise CommandFailed(f"{target} did not answer with a JSON object: is that a kernel's dashboard?")
    return data


def show_workers(url: str, *, as_json: bool) -> int:
    """``kernel workers``: every worker of the pool."""
    workers = fetch(url)["workers"]
    if as_json:
        print(json.dumps(workers, indent=2))
    else:
        console = Console()
        console.print(workers_table(workers, console.width))
    return 0


def operate_worker(url: str, worker_id: str, action: str | None, *, as_json: bool, token_file: str | None,
                   message: str | None = None, timeout: float = 5.0) -> int:
    """``kernel worker ID [--drain|--stop|--restart|--message JSON]``: show it, or act on it."""
    if message is not None:
        try:
            body = json.dumps({"message": json.loads(message), "timeout": timeout}).encode()
        except json.JSONDecodeError as exc:
            raise RequestRefused(f"--message takes JSON: {exc}") from None
        answer = _request(url, f"/api/workers/{quote(worker_id, safe='')}/message", method="POST",
                          token=admin_token(token_file), body=body)
        print(json.dumps(answer if as_json else answer.get("replies", {}), indent=None if as_json else 2))
        return 0
    if action is None:
        worker = _request(url, f"/api/workers/{quote(worker_id, safe='')}")
        if as_json:
            print(json.dumps(worker, indent=2))
        else:
            Console().print(worker_detail(worker))
        return 0
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    answer = _request(url, f"/api/workers/{quote(worker_id, safe='')}/{action}", method="POST",
                      token=admin_token(token_file))
    print(json.dumps(answer) if as_json else f"worker {worker_id}: {action} requested")
    return 0


def revoke_call(url: str, task_id: int, *, as_json: bool, token_file: str | None) -> int:
    """``kernel revoke TASK_ID``: the call never runs, or is stopped; never retried."""
    answer = _request(url, f"/api/calls/{task_id}/revoke", method="POST", token=admin_token(token_file))
    print(json.dumps(answer) if as_json else f"task {task_id}: revoked (it was {answer.get('was', '?')})")
    return 0
