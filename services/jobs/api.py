"""The job API over HTTP (aiohttp), JSON in and out; described in ``openapi.json``.

Every request, read or write, needs ``Authorization: Bearer <token>``; the one exception
is the jobs page itself (``GET /``), which holds no data and asks for the token. The token comes
from ``custom.api.tokenFile``, else ``$MICROKERNEL_JOBS_TOKEN``, else the file
``jobs.token`` in the data folder (made, chmod 600, on first start), where a client on
the same machine finds it. It is never logged. A refused request gets a JSON error that
says why; the token is compared in constant time.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web

from kernel.errors import ConfigError
from kernel.http.bodies import BadRequest, int_param, read_json
from kernel.http.listen import Limits, json_errors, listen
from kernel.logs import Throttle, log_throttled
from kernel.tokens import own_token

from .model import Job, LogLine, Page
from .settings import TOKEN_FILE, ApiSettings, JobError

log = structlog.get_logger("jobs")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_LIST = 1000


def error(status: int, message: str, field: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers or None)


def load_token(settings: ApiSettings, folder: Path) -> tuple[bytes, str]:
    """The API's token and where it came from (a file path or an env name, never the token).

    :raises ConfigError: the token file cannot be read, is empty, or others may read it.
    """
    return own_token(settings.token_env, settings.token_file, folder=folder, name=TOKEN_FILE, what="API token")


class Jobs(Protocol):
    """What the API serves (the job service; see :class:`.service.JobService` for each)."""

    def submit(self, body: Any) -> tuple[Job, bool]: ...
    def get(self, job_id: str) -> Job: ...
    async def query(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                    limit: int = 100, max_bytes: int | None = None, after: str | None = None) -> Page: ...
    def cancel(self, job_id: str) -> Job: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    async def wait(self, job_id: str, timeout: float | None = None) -> Job: ...
    def logs(self, job_id: str, after: int = 0) -> list[LogLine]: ...
    def follow(self, job_id: str, after: int = 0) -> AsyncIterator[LogLine]: ...


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


class JobApi:
    """Serves one job service (see the module docstring)."""

    def __init__(self, jobs: Jobs, settings: ApiSettings, folder: Path, manifest: Path) -> None:
        self.jobs = jobs
        self.settings = settings
        self.folder = folder
        self.manifest = manifest  # the jobs service's config.json, named in start-up errors
        self.token_source = ""
        self._token = b""
        self._runner: web.AppRunner | None = None
        self._throttle = Throttle()  # refusals logged: a flood of them cannot fill the disk

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body, middlewares=[json_errors(), self._guard])
        r = app.router
        r.add_post("/jobs", self.submit)
        r.add_get("/jobs", self.query)
        r.add_get("/jobs/counts", self.counts)
        r.add_get("/jobs/{id}", self.get)
        r.add_get("/jobs/{id}/result", self.result)
        r.add_post("/jobs/{id}/cancel", self.cancel)
        r.add_get("/jobs/{id}/logs", self.logs)
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/", self.page)
        return app

    async def start(self) -> str:
        """Serve; return the base URL.

        :raises ConfigError: the port is taken, the address unusable, or TLS or token
            files unreadable (naming the field to change).
        """
        s = self.settings
        self._token, self.token_source = load_token(s, self.folder)
        tls = None
        if s.cert_file is not None and s.key_file is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(s.cert_file, s.key_file)
            except (OSError, ssl.SSLError) as exc:
                why = f"cannot load {s.cert_file}: {exc}"
                raise ConfigError(self.manifest, [("custom.api.certFile", why)]) from None
        self._runner, address = await listen(self.app(), s.host, s.port, settings="custom.api", path=self.manifest,
                                             tls=tls, limits=Limits(s.client_timeout, s.max_connections))
        return address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" and request.method == "GET":
            return await handler(request)  # the page holds no data: it asks for the token, then for jobs
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if not given.isascii():  # a token is ASCII; anything else cannot be it (and would not encode)
            given = ""
        if scheme.lower() != "bearer" or not given.strip():
            log_throttled(log, self._throttle, "warning", "job request refused", reason="no token",
                          peer=request.remote, path=request.path[:200])
            return error(401, "this API needs its token: Authorization: Bearer <token> (kernel run prints where "
                              "it is kept)", **{"WWW-Authenticate": 'Bearer realm="microkernel-jobs"'})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            log_throttled(log, self._throttle, "warning", "job request refused", reason="wrong token",
                          peer=request.remote, path=request.path[:200])
            return error(403, "wrong token")
        try:
            return await handler(request)
        except (JobError, BadRequest) as exc:
            return error(exc.status, str(exc), exc.field)
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"the request body is over {self.settings.max_body:,} bytes (custom.api.maxBody)")

    # -- handlers -----------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        s = self.settings
        body = await read_json(request, max_depth=s.max_depth, timeout=s.body_timeout)
        job, new = self.jobs.submit(body)
        return web.json_response(job.to_json(), status=201 if new else 200, dumps=_dumps)

    async def query(self, request: web.Request) -> web.Response:
        q = request.query
        limit = int_param(request, "limit", 100, 1, MAX_LIST)
        jobs = await self.jobs.query(state=q.get("state"), project=q.get("project"), type=q.get("type"), limit=limit,
                                     max_bytes=self.settings.max_list_bytes, after=q.get("after"))
        page = {"jobs": [j.to_json() for j in jobs], "next": jobs.next}  # next: ?after= of the page after
        text = await asyncio.to_thread(_dumps, page)
        return web.Response(text=text, content_type="application/json")

    async def counts(self, request: web.Request) -> web.Response:
        counts = await asyncio.to_thread(self.jobs.counts)  # a scan of every job: off the event loop
        return web.json_response({"counts": counts}, dumps=_dumps)

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self.jobs.get(request.match_info["id"]).to_json(), dumps=_dumps)

    async def result(self, request: web.Request) -> web.Response:
        """The job once finished; ``?wait=SECONDS`` waits for it that long (else 202 with the job)."""
        wait = _seconds(request.query.get("wait", "0"), "wait")
        job = await self.jobs.wait(request.match_info["id"], wait)
        return web.json_response(job.to_json(), status=200 if job.state.finished else 202, dumps=_dumps)

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.cancel(request.match_info["id"])
        return web.json_response(job.to_json(), status=202, dumps=_dumps)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """The job's log lines after ``?after=N``, one JSON object a line; ``?follow=1``
        streams them as they come until the job has finished."""
        job_id = request.match_info["id"]
        after = int_param(request, "after", 0)
        follow = request.query.get("follow", "0") not in ("0", "false", "")
        if not follow:
            lines = self.jobs.logs(job_id, after)
            text = "".join(_dumps(line._asdict()) + "\n" for line in lines)
            return web.Response(text=text, content_type="application/x-ndjson")
        self.jobs.get(job_id)  # a 404 before the stream starts
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for line in self.jobs.follow(job_id, after):
                await response.write((_dumps(line._asdict()) + "\n").encode())
            await response.write_eof()
        except ConnectionError:  # the follower went away (Ctrl-C on kernel logs -f): nothing to tell
            pass
        return response

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=_packaged("jobs.html"), content_type="text/html", headers={
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "connect-src 'self'; frame-ancestors 'none'"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=_packaged("openapi.json"), content_type="application/json")


@functools.cache
def _packaged(name: str) -> str:
    """A file shipped in this package, read once."""
    return resources.files(__package__).joinpath(name).read_text("utf-8")


def _seconds(raw: str, field: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise JobError(f"{field} must be a number, not {raw!r}", field=field) from None
    if not 0 <= value <= 3600:
        raise JobError(f"{field} must be 0-3600, not {raw}", field=field)
    return value
