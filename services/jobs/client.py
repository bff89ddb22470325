"""Python clients of the job API, sync (urllib3) and async (aiohttp)::

    from microkernel.services.jobs import Client

    with Client("http://127.0.0.1:8791") as client:
        job = client.submit(service="prime-counter", method="count_range", args=[0, 1000])
        print(client.result(job.id))

The token is the one given, else ``$MICROKERNEL_JOBS_TOKEN``, else the ``jobs.token``
file the kernel keeps in its data folder (a kernel on the same machine and user).
Errors are typed: :class:`JobRejected` (the request is wrong: ``field`` says where),
:class:`JobNotFound`, :class:`AuthError`, :class:`JobFailed` (from ``result``).
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import urllib3

from kernel.errors import KernelError

from .model import COMMON, Job, JobState, LogLine
from .settings import DEFAULT_PORT, TOKEN_ENV, TOKEN_FILE, default_data_dir

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class ClientError(KernelError):
    """The job API refused a request, or cannot be reached."""

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.field = status, field


class JobRejected(ClientError):
    """The request is wrong (``field`` names what)."""


class JobNotFound(ClientError):
    """No such job (or it was purged after the retention period)."""


class AuthError(ClientError):
    """No token, or the wrong one."""


class JobFailed(ClientError):
    """The job ended without a result: failed, cancelled or lost (``job`` says how)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} {job.state}: {job.error}")
        self.job = job


def find_token(token: str | None = None) -> str:
    """The token given, else ``$MICROKERNEL_JOBS_TOKEN``, else the data folder's ``jobs.token``.

    :raises AuthError: none of them.
    """
    if token:
        return token
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    path = default_data_dir() / TOKEN_FILE
    try:
        return path.read_text().strip()
    except OSError:
        raise AuthError(f"no token: pass token=..., set ${TOKEN_ENV}, or run this where the kernel keeps "
                        f"{path}") from None


def _raise_for(status: int, data: bytes) -> None:
    if status < 400:
        return
    try:
        body = json.loads(data)
        message, field = body.get("error", data.decode(errors="replace")), body.get("field")
    except (ValueError, AttributeError):
        message, field = data.decode(errors="replace")[:200] or f"HTTP {status}", None
    kind = (AuthError if status in (401, 403) and field is None else JobNotFound if status == 404
            else JobRejected if status < 500 else ClientError)
    raise kind(f"{message} (HTTP {status})", status=status, field=field)


def _query(params: Mapping[str, Any] | None) -> str:
    shown = {k: v for k, v in (params or {}).items() if v is not None}
    return f"?{urlencode(shown)}" if shown else ""


def _tls(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def _job(data: Mapping[str, Any]) -> Job:
    return Job(**{**data, "state": JobState(data["state"])})


def _body(request: Any, args: tuple[Any, ...], fields: Mapping[str, Any]) -> dict[str, Any]:
    """A job request: a mapping (plus fields), or a callable with its arguments, pickled
    (keywords named as a job's options are the job's, the others the callable's)."""
    if callable(request):
        import cloudpickle

        options = {k: v for k, v in fields.items() if k in COMMON and k != "type"}
        kwargs = {k: v for k, v in fields.items() if k not in options}
        payload = base64.b64encode(cloudpickle.dumps((request, args, kwargs))).decode()
        return {"type": "pickle", "payload": payload, **options}
    if args:
        raise TypeError("positional arguments go with a callable: submit(fn, *args, **kwargs)")
    return {**(request or {}), **fields}


def _finished(job: Job) -> Any:
    if job.state == JobState.SUCCEEDED:
        return job.result
    raise JobFailed(job)


class Client:
    """A blocking client of one kernel's job API (see the module docstring; urllib3)."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0,
                 verify: bool = True, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {find_token(token)}", "Content-Type": "application/json"}
        tls = _tls(verify, ca_file) if self.url.startswith("https:") else None
        self._http = urllib3.PoolManager(maxsize=4, ssl_context=tls, retries=False)

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.clear()

    def _call(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None,
              timeout: float | None = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        data = json.dumps(body).encode() if body is not None else None
        try:
            response = self._http.request(method, self.url + path + _query(params), body=data, headers=self._headers,
                                          timeout=urllib3.Timeout(connect=10, read=timeout or self.timeout),
                                          preload_content=not stream)
        except urllib3.exceptions.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
        if response.status >= 400:
            _raise_for(response.status, response.data if not stream else response.read())
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return json.loads(self._call(method, path, **kwargs).data)

    def submit(self, request: Mapping[str, Any] | Callable[..., Any] | None = None, /, *args: Any,
               **fields: Any) -> Job:
        """Submit a job; the job, with its id. ``request`` is a job request (or give its
        fields as keywords), or a callable: ``submit(fn, *args, retries=1, **kwargs)``
        pickles ``fn(*args, **kwargs)`` (it is unpickled on a worker only; keywords
        named as a job's options, such as ``priority`` or ``key``, are the job's)."""
        return _job(self._json("POST", "/jobs", body=_body(request, args, fields)))

    def status(self, job_id: str) -> Job:
        return _job(self._json("GET", f"/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished, or as it is after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            job = _job(self._json("GET", f"/jobs/{job_id}/result", params={"wait": left}, timeout=left + 30))
            if job.state.finished or (deadline is not None and time.monotonic() >= deadline):
                return job

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result, once it has one.

        :raises JobFailed: it failed, was cancelled or was lost.
        :raises TimeoutError: not finished within ``timeout`` seconds.
        """
        job = self.wait(job_id, timeout)
        if not job.state.finished:
            raise TimeoutError(f"job {job_id} has not finished within {timeout:g} s (it is {job.state})")
        return _finished(job)

    def cancel(self, job_id: str) -> Job:
        return _job(self._json("POST", f"/jobs/{job_id}/cancel"))

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs by state, then by type."""
        counts: dict[str, dict[str, int]] = self._json("GET", "/jobs/counts")["counts"]
        return counts

    def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
             limit: int = 100) -> builtins.list[Job]:
        params = {"state": state, "project": project, "type": type, "limit": limit}
        return [_job(j) for j in self._json("GET", "/jobs", params=params)["jobs"]]

    def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> Iterator[LogLine]:
        """The job's log lines; with ``follow``, as they come until the job has finished."""
        response = self._call("GET", f"/jobs/{job_id}/logs", params={"after": after, "follow": int(follow)},
                              timeout=3600.0 if follow else None, stream=True)
        try:
            for line in response:
                if line.strip():
                    yield LogLine(**json.loads(line))
        except urllib3.exceptions.HTTPError as exc:
            raise ClientError(f"the job API at {self.url} broke off the log: {exc}") from None
        finally:
            response.release_conn()


class AsyncClient:
    """The same as :class:`Client`, awaitable (aiohttp)."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0,
                 verify: bool = True, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {find_token(token)}"}
        self._tls = _tls(verify, ca_file) if self.url.startswith("https:") else None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the loop that uses it
            connector = aiohttp.TCPConnector(limit=64, ssl=self._tls if self._tls is not None else True)
            self._session = aiohttp.ClientSession(headers=self._headers, connector=connector)
        return self._session

    async def _json(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None,
                    timeout: float | None = None) -> Any:
        try:
            async with self._http().request(method, self.url + path + _query(params), json=body,
                                            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {type(exc).__name__}: {exc}") from None
        _raise_for(response.status, data)
        return json.loads(data)

    async def submit(self, request: Mapping[str, Any] | Callable[..., Any] | None = None, /, *args: Any,
                     **fields: Any) -> Job:
        return _job(await self._json("POST", "/jobs", body=_body(request, args, fields)))

    async def status(self, job_id: str) -> Job:
        return _job(await self._json("GET", f"/jobs/{job_id}"))

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            job = _job(await self._json("GET", f"/jobs/{job_id}/result", params={"wait": left}, timeout=left + 30))
            if job.state.finished or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        job = await self.wait(job_id, timeout)
        if not job.state.finished:
            raise TimeoutError(f"job {job_id} has not finished within {timeout:g} s (it is {job.state})")
        return _finished(job)

    async def cancel(self, job_id: str) -> Job:
        return _job(await self._json("POST", f"/jobs/{job_id}/cancel"))

    async def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = (await self._json("GET", "/jobs/counts"))["counts"]
        return counts

    async def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                   limit: int = 100) -> builtins.list[Job]:
        params = {"state": state, "project": project, "type": type, "limit": limit}
        return [_job(j) for j in (await self._json("GET", "/jobs", params=params))["jobs"]]

    async def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> AsyncIterator[LogLine]:
        url = self.url + f"/jobs/{job_id}/logs" + _query({"after": after, "follow": int(follow)})
        try:
            async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status >= 400:
                    _raise_for(response.status, await response.read())
                async for line in response.content:
                    if line.strip():
                        yield LogLine(**json.loads(line))
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
