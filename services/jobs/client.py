"""Python clients of the job API, sync and async (httpx)::

    from microkernel.services.jobs import Client

    with Client("http://127.0.0.1:8786") as client:
        job = client.submit(service="prime-counter", method="count_range", args=[0, 1000])
        print(client.result(job.id))

The token is the one given, else ``$MICROKERNEL_JOBS_TOKEN``, else the ``jobs.token``
file the kernel keeps in its data folder (a kernel on the same machine and user).
Errors are typed: :class:`JobRejected` (the request is wrong: ``field`` says where),
:class:`JobNotFound`, :class:`AuthError`, :class:`JobFailed` (from ``result``).
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx

from kernel.errors import KernelError

from .model import Job, JobState, LogLine
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


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message, field = body.get("error", response.text), body.get("field")
    except (json.JSONDecodeError, AttributeError):
        message, field = response.text or response.reason_phrase, None
    status = response.status_code
    kind = (AuthError if status in (401, 403) and field is None else JobNotFound if status == 404
            else JobRejected if status < 500 else ClientError)
    raise kind(f"{message} (HTTP {status})", status=status, field=field)


def _job(data: Mapping[str, Any]) -> Job:
    return Job(**{**data, "state": JobState(data["state"])})


def _body(request: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {**(request or {}), **fields}


def _finished(job: Job) -> Any:
    if job.state == JobState.SUCCEEDED:
        return job.result
    raise JobFailed(job)


class Client:
    """A blocking client of one kernel's job API (see the module docstring)."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0,
                 verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify,
                                  headers={"Authorization": f"Bearer {find_token(token)}"})

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
        _raise_for(response)
        return response

    def submit(self, request: Mapping[str, Any] | None = None, /, **fields: Any) -> Job:
        """Submit a job (a request object, or its fields as keywords); the job, with its id."""
        return _job(self._call("POST", "/jobs", json=_body(request, fields)).json())

    def status(self, job_id: str) -> Job:
        return _job(self._call("GET", f"/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished, or as it is after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            job = _job(self._call("GET", f"/jobs/{job_id}/result", params={"wait": left},
                                  timeout=left + 30).json())
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
        return _job(self._call("POST", f"/jobs/{job_id}/cancel").json())

    def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
             limit: int = 100) -> builtins.list[Job]:
        params = {k: v for k, v in {"state": state, "project": project, "type": type, "limit": limit}.items()
                  if v is not None}
        return [_job(j) for j in self._call("GET", "/jobs", params=params).json()["jobs"]]

    def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> Iterator[LogLine]:
        """The job's log lines; with ``follow``, as they come until the job has finished."""
        params = {"after": after, "follow": int(follow)}
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/logs", params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line:
                        yield LogLine(**json.loads(line))
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None


class AsyncClient:
    """The same as :class:`Client`, awaitable."""

    def __init__(self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0,
                 verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, verify=verify,
                                       headers={"Authorization": f"Bearer {find_token(token)}"})

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None
        _raise_for(response)
        return response

    async def submit(self, request: Mapping[str, Any] | None = None, /, **fields: Any) -> Job:
        return _job((await self._call("POST", "/jobs", json=_body(request, fields))).json())

    async def status(self, job_id: str) -> Job:
        return _job((await self._call("GET", f"/jobs/{job_id}")).json())

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            job = _job((await self._call("GET", f"/jobs/{job_id}/result", params={"wait": left},
                                         timeout=left + 30)).json())
            if job.state.finished or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        job = await self.wait(job_id, timeout)
        if not job.state.finished:
            raise TimeoutError(f"job {job_id} has not finished within {timeout:g} s (it is {job.state})")
        return _finished(job)

    async def cancel(self, job_id: str) -> Job:
        return _job((await self._call("POST", f"/jobs/{job_id}/cancel")).json())

    async def list(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
                   limit: int = 100) -> builtins.list[Job]:
        params = {k: v for k, v in {"state": state, "project": project, "type": type, "limit": limit}.items()
                  if v is not None}
        return [_job(j) for j in (await self._call("GET", "/jobs", params=params)).json()["jobs"]]

    async def logs(self, job_id: str, *, follow: bool = False, after: int = 0) -> AsyncIterator[LogLine]:
        params = {"after": after, "follow": int(follow)}
        try:
            async with self._http.stream("GET", f"/jobs/{job_id}/logs", params=params, timeout=None) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if line:
                        yield LogLine(**json.loads(line))
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the job API at {self.url}: {exc}") from None


