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
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

import aiohttp
import urllib3

from kernel.errors import KernelError
from kernel.tokens import data_dir

from .model import COMMON, Job, JobState, LogLine, Page
from .settings import DEFAULT_PORT, TOKEN_ENV, TOKEN_FILE

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
    path = data_dir() / TOKEN_FILE
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



class HttpCall(NamedTuple):
    """One request an operation needs; a client sends it and hands back the JSON."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, Any] | None = None
    timeout: float | None = None


T = TypeVar("T")
Operation = Generator[HttpCall, Any, T]
"""An API operation, written once for both clients: it yields the HTTP calls it needs,
is sent each one's decoded JSON, and returns its value (httpcore's "one source, two
faces", without code generation). Errors of the transport reach the caller unchanged."""


def _submit(request: Any, args: tuple[Any, ...], fields: Mapping[str, Any]) -> Operation[Job]:
    return _job((yield HttpCall("POST", "/jobs", body=_body(request, args, fields))))


def _status(job_id: str) -> Operation[Job]:
    return _job((yield HttpCall("GET", f"/jobs/{job_id}")))


def _wait(job_id: str, timeout: float | None) -> Operation[Job]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
        job = _job((yield HttpCall("GET", f"/jobs/{job_id}/result", params={"wait": left}, timeout=left + 30)))
        if job.state.finished or (deadline is not None and time.monotonic() >= deadline):
            return job


def _result(job_id: str, timeout: float | None) -> Operation[Any]:
    job = yield from _wait(job_id, timeout)
    if not job.state.finished:
        raise TimeoutError(f"job {job_id} has not finished within {timeout:g} s (it is {job.state})")
    return _finished(job)


def _cancel(job_id: str) -> Operation[Job]:
    return _job((yield HttpCall("POST", f"/jobs/{job_id}/cancel")))


def _counts() -> Operation[dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, int]] = (yield HttpCall("GET", "/jobs/counts"))["counts"]
    return counts


def _list(state: str | None, project: str | None, type: str | None, limit: int, after: str | None) -> Operation[Page]:
    params = {"state": state, "project": project, "type": type, "limit": limit, "after": after}
    answer = yield HttpCall("GET", "/jobs", params=params)
    page = Page(_job(j) for j in answer["jobs"])
    page.next = answer.get("next")
    return page


def _logs_call(job_id: str, follow: bool, after: int) -> HttpCall:
    return HttpCall("GET", f"/jobs/{job_id}/logs", params={"after": after, "follow": int(follow)},
                    timeout=3600.0 if follow else None)


def _line(raw: bytes) -> LogLine | None:
    return LogLine(**json.loads(raw)) if raw.strip() else None


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

    def _send(self, call: HttpCall, *, stream: bool = False) -> urllib3.BaseHTTPResponse:
        data = json.dumps(call.body).encode() if call.body is not None else None
        try:
            response = self._http.request(call.method, self.url + call.path + _query(call.params), body=data,
                                          headers=self._headers, preload_content=not stream,
                                          timeout=urllib3.Timeout(connect=10, read=call.timeout or self.timeout))
        except urllib3.exceptions.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
        if response.status >= 400:
            _raise_for(response.status, response.data if not stream else response.read())
        return response

    def _run(self, operation: Operation[T]) -> T:
        try:
            call = next(operation)
            while True:
                call = operation.send(json.loads(self._send(call).data))
        except StopIteration as done:
            value: T = done.value
            return value

    def submit(self, request: Mapping[str, Any] | Callable[..., Any] | None = None, /, *args: Any,
               **fields: Any) -> Job:
        """Submit a job; the job, with its id. ``request`` is a job request (or give its
        fields as keywords), or a callable: ``submit(fn, *args, retries=1, **kwargs)``
        pickles ``fn(*args, **kwargs)`` (it is unpickled on a worker only; keywords
        named as a job's options, such as ``priority`` or ``key``, are the job's)."""
        return self._run(_submit(request, args, fields))

    def status(self, job_id: str) -> Job:
        return self._run(_status(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished, or as it is after ``timeout`` seconds."""
        return self._run(_wait(job_id, timeout))

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's result, once it has one.

        :raises JobFailed: it failed, was cancelled or was lost.
        :raises TimeoutError: not finished within ``timeout`` seconds.
        """
        return self._run(_result(job_id, timeout))

    def cancel(self, job_id: str) -> Job:
        return self._run(_cancel(job_id))

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs by state, then by type."""
        return self._run(_counts())

    def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
             limit: int = 100, after: str | None = None) -> Page:
        """Jobs, newest first, ``limit`` at most; the next page is ``list(after=page.next)``
        (``page.next`` is None on the last)."""
        return self._run(_list(state, project, type, limit, after))

    def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> Iterator[LogLine]:
        """The job's log lines; with ``follow``, as they come until the job has finished."""
        response = self._send(_logs_call(job_id, follow, after), stream=True)
        try:
            for raw in response:
                line = _line(raw)
                if line is not None:
                    yield line
        except urllib3.exceptions.HTTPError as exc:
            raise ClientError(f"the job API at {self.url} broke off the log: {exc}") from None
        finally:
            response.release_conn()


class AsyncClient:
    """The same as :class:`Client`, awaitable (aiohttp); the operations are the same code."""

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

    async def _send(self, call: HttpCall) -> Any:
        url = self.url + call.path + _query(call.params)
        limit = aiohttp.ClientTimeout(total=call.timeout or self.timeout)
        try:
            async with self._http().request(call.method, url, json=call.body, timeout=limit) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {type(exc).__name__}: {exc}") from None
        _raise_for(response.status, data)
        return json.loads(data)

    async def _run(self, operation: Operation[T]) -> T:
        try:
            call = next(operation)
            while True:
                call = operation.send(await self._send(call))
        except StopIteration as done:
            value: T = done.value
            return value

    async def submit(self, request: Mapping[str, Any] | Callable[..., Any] | None = None, /, *args: Any,
                     **fields: Any) -> Job:
        return await self._run(_submit(request, args, fields))

    async def status(self, job_id: str) -> Job:
        return await self._run(_status(job_id))

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        return await self._run(_wait(job_id, timeout))

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        return await self._run(_result(job_id, timeout))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(_cancel(job_id))

    async def counts(self) -> dict[str, dict[str, int]]:
        return await self._run(_counts())

    async def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                   limit: int = 100, after: str | None = None) -> Page:
        """See :meth:`Client.list`."""
        return await self._run(_list(state, project, type, limit, after))

    async def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> AsyncIterator[LogLine]:
        call = _logs_call(job_id, follow, after)
        url = self.url + call.path + _query(call.params)
        try:
            async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status >= 400:
                    _raise_for(response.status, await response.read())
                async for raw in response.content:
                    line = _line(raw)
                    if line is not None:
                        yield line
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
