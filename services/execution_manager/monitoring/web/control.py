"""The control endpoints behind the admin token: drain or stop a worker, scale, set a
project's limit. Each checks its input and answers with what it did, or a 4xx whose
message names the field or worker at fault; nothing changes on a bad request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from kernel.http.bodies import BadRequest, read_json

if TYPE_CHECKING:
    from ...pool.operations import Operations
    from .manager import Manager

log = structlog.get_logger("http")
MAX_COUNT = 4096  # workers or calls an admin may ask for at once: beyond, a typo, not a plan
MAX_NAME = 200  # characters of a project's name
MAX_LIMITED = 10_000  # projects with a limit of their own


async def body(request: web.Request, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The request's JSON object, holding only ``fields`` (name -> accepted types).

    :raises BadRequest: naming what is wrong (:func:`kernel.http.bodies.read_json` checks the rest).
    """
    data = await read_json(request, max_depth=4, timeout=10.0)
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object with {', '.join(fields)}, not {type(data).__name__}")
    for name, value in data.items():
        if name not in fields:
            raise BadRequest(f"unknown field {name[:40]!r} (expected {', '.join(fields)})", field=name[:40])
        if isinstance(value, bool) or not isinstance(value, fields[name]):
            kind = "an integer or null" if isinstance(fields[name], tuple) else "an integer"
            raise BadRequest(f"field {name!r} must be {kind}, not {json.dumps(value)[:40]}", field=name)
        if isinstance(value, int) and not 0 <= value <= MAX_COUNT:
            raise BadRequest(f"field {name!r} must be 0-{MAX_COUNT}, not {value}", field=name)
    return data


def _operations(em: Manager, missing: str) -> Operations:
    """The pool's operations; before the pool runs, nothing is there (``missing``)."""
    if em.pool is None:
        raise LookupError(missing)
    return em.pool.operations


def _retire(em: Manager, request: web.Request, reason: str, drain: bool) -> str:
    worker_id = request.match_info["worker_id"]
    _operations(em, f"no worker {worker_id!r} (workers: none)").retire_soon(worker_id, reason, drain=drain)
    return worker_id


async def drain(em: Manager, request: web.Request) -> web.Response:
    """Stop giving the worker calls, move its pinned instances, let it finish, stop it."""
    worker_id = _retire(em, request, "drained on request", drain=True)
    log.info("worker drain requested", worker_id=worker_id, peer=request.remote)
    return web.json_response({"worker": worker_id, "action": "drain"}, status=202)


async def stop(em: Manager, request: web.Request) -> web.Response:
    """Stop the worker now: what it runs fails with WorkerCrashedError (or is retried)."""
    worker_id = _retire(em, request, "stopped on request", drain=False)
    log.info("worker stop requested", worker_id=worker_id, peer=request.remote)
    return web.json_response({"worker": worker_id, "action": "stop"}, status=202)


async def restart(em: Manager, request: web.Request) -> web.Response:
    """Drain the worker, then start a new one under its id (a node's slot: its node
    replaces it); 409 if it is leaving already or cannot restart (a Dask worker)."""
    worker_id = request.match_info["worker_id"]
    _operations(em, f"no worker {worker_id!r} (workers: none)").restart_soon(worker_id)
    log.info("worker restart requested", worker_id=worker_id, peer=request.remote)
    return web.json_response({"worker": worker_id, "action": "restart"}, status=202)


async def message(em: Manager, request: web.Request) -> web.Response:
    """``{"message": <JSON>, "timeout": seconds}`` to the instances pinned on the worker
    (``*``: every worker): each worker's replies in pin order, or its error."""
    worker_id = request.match_info["worker_id"]
    data = await read_json(request, max_depth=32, timeout=10.0)
    if not isinstance(data, dict) or "message" not in data or not set(data) <= {"message", "timeout"}:
        raise BadRequest('the body is {"message": <any JSON>, "timeout": <seconds, optional>}')
    timeout = data.get("timeout", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise BadRequest(f"timeout must be a number of seconds from 0 to 300, not {json.dumps(timeout)[:40]}",
                         field="timeout")
    operations = _operations(em, f"no worker {worker_id!r} (workers: none)")
    answers = await operations.send(worker_id, data["message"], float(timeout))
    log.info("message sent on request", worker_id=worker_id, peer=request.remote)
    return web.json_response({"action": "message", "worker": worker_id, "replies": {
        wid: {"error": f"{type(a).__name__}: {a}"} if isinstance(a, BaseException)
        else [{"error": str(r)} if isinstance(r, BaseException) else {"reply": r} for r in a]
        for wid, a in answers.items()}})


async def revoke(em: Manager, request: web.Request) -> web.Response:
    """Revoke a call by its task id: waiting, it never runs; running, it is stopped (its
    worker replaced); never retried. 404 if no such call waits or runs."""
    given = request.match_info["task_id"]
    if not given.isdigit() or len(given) > 18:
        raise BadRequest(f"a task id is a number, not {given[:40]!r}", field="task_id")
    missing = f"no call with task id {given} is waiting or running"
    where = _operations(em, missing).revoke(int(given), "revoked on request")
    log.info("call revoked on request", task_id=int(given), was=where, peer=request.remote)
    return web.json_response({"task_id": int(given), "action": "revoke", "was": where})


async def scale(em: Manager, request: web.Request) -> web.Response:
    """``{"minWorkers": n, "maxWorkers": m}`` (either may be left out)."""
    data = await body(request, {"minWorkers": int, "maxWorkers": int})
    if not data:
        raise BadRequest("give minWorkers, maxWorkers or both")
    assert em.pool is not None
    try:
        decision = em.pool.scaling.set_bounds(data.get("minWorkers"), data.get("maxWorkers"))
    except ValueError as exc:  # minWorkers above maxWorkers, no worker at all...
        raise BadRequest(str(exc)) from None
    log.info("scaling bounds set", peer=request.remote, **data)
    s = em.pool.settings
    return web.json_response({"min_workers": s.min_workers, "max_workers": s.max_workers, "decision": decision})


async def project_limit(em: Manager, request: web.Request) -> web.Response:
    """``{"limit": n}`` or ``{"limit": null}`` to lift it."""
    project = request.match_info["project"]
    if not 0 < len(project) <= MAX_NAME or not project.isprintable():
        raise BadRequest(f"a project name is 1-{MAX_NAME} printable characters, not {project[:40]!r}...",
                         field="project")
    data = await body(request, {"limit": (int, type(None))})
    if "limit" not in data:
        raise BadRequest("give the field 'limit' (an integer >= 1, or null for no limit)")
    limits = em.pool.snapshot().project_limits if em.pool is not None else {}
    if data["limit"] is not None and project not in limits and len(limits) >= MAX_LIMITED:
        raise BadRequest(f"{MAX_LIMITED} projects have limits already; lift one first", status=409)
    em.set_project_limit(project, data["limit"])
    log.info("project limit set", project=project, limit=data["limit"], peer=request.remote)
    return web.json_response({"project": project, "limit": data["limit"]})
