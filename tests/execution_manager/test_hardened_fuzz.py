"""Every operation of the job API's openapi.json and every dashboard ``/api`` route,
driven with generated requests (hypothesis): malformed bodies, headers, query values
and path parameters. No answer may be a 5xx, and the kernel logs no traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.execution_manager.test_hardened import ADMIN_TOKEN, Served

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "services" / "jobs" / "openapi.json").read_text())
OPERATIONS = [(method.upper(), path, op) for path, item in OPENAPI["paths"].items()
              for method, op in item.items() if method in ("get", "post", "put", "delete")]
DASHBOARD = [("GET", f"/api/{part}") for part in ("status", "workers", "nodes", "services", "failures", "projects",
                                                   "scaling", "exited", "pool", "stats", "live")] + [
    ("POST", "/api/workers/{worker_id}/drain"), ("POST", "/api/workers/{worker_id}/stop"), ("POST", "/api/scale"),
    ("PUT", "/api/projects/{project}/limit")]

ODD = ["", "nan", "inf", "-1", "1e999", "\u00b2", "\u0661", "99999999999999999999", "0x10", " 1", "null", "[]",
       "\ud800".encode("utf-8", "surrogatepass").decode("latin-1"), "%00", "../../etc/passwd"]
texts = st.one_of(st.sampled_from(ODD), st.text(max_size=40), st.integers(-10**30, 10**30).map(str))
leaves = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.integers().map(lambda i: i * 10**30),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["function", "service", "method", "module", "args", "kwargs", "argv", "priority", "project", "timeout",
          "retries", "key", "name", "type", "url", "command", "code", "limit", "minWorkers", "maxWorkers", "body"]
jobs = st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, st.sampled_from(["math:sqrt", "math:factorial",
                                                                                      "nosuch:f", "math"])),
                       max_size=6)
RAW = [b"[" * 3000, b'{"a": NaN}', b'{"a": 1e999}', b"\xff\xfe", b'{"a": "\\ud800"}', b"9" * 5000, b'{"a": -Infinity}']
bodies = st.one_of(st.none(), st.binary(max_size=300), st.sampled_from(RAW),
                   values.map(lambda v: json.dumps(v).encode()), jobs.map(lambda v: json.dumps(v).encode()))
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                                     "application/json; charset=bogus", "multipart/form-data; boundary=x", ""]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x"]),
    "Accept-Encoding": st.sampled_from(["gzip", "*", ""]),
    "Authorization": st.sampled_from(["Bearer", "Bearer x", "Basic eA==", "bearer  x"]),
})
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    kernel = Served(tmp_path_factory.mktemp("fuzzed"))
    yield kernel
    log = kernel.stop()
    assert "Traceback" not in log, log[-5000:]
    assert not re.search(r'"level": "(error|critical)"', log), log[-5000:]


def _path(template: str, params: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: quote(params.get(m.group(1), "x"), safe=""), template)


def _check(answer: httpx.Response, what: Any) -> None:
    assert answer.status_code < 500, (what, answer.status_code, answer.text[:300])
    if answer.status_code >= 400:
        assert answer.headers.get("Content-Type", "").startswith("application/json"), (what, answer.text[:300])


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_no_request_to_the_job_api_gets_a_5xx(served: Served, method: str, path: str, op: dict[str, Any]) -> None:
    names = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
    if path == "/jobs/{id}/result":
        names = [n for n in names if n != "wait"]  # a real wait is a slow answer, not a wrong one

    @SETTINGS
    @given(params=st.fixed_dictionaries({}, optional=dict.fromkeys(["id", *names], texts)), body=bodies,
           extra=headers, token=st.booleans())
    def run(params: dict[str, str], body: bytes | None, extra: dict[str, str], token: bool) -> None:
        auth = {"Authorization": f"Bearer {served.token}"} if token and "Authorization" not in extra else {}
        query = {k: v for k, v in params.items() if k != "id"}
        with httpx.Client(base_url=served.api, timeout=15) as http:
            answer = http.request(method, _path(path, params), params=query, content=body, headers=auth | extra)
        _check(answer, (method, path, params, body, extra))

    run()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("method", "path"), DASHBOARD, ids=[f"{m} {p}" for m, p in DASHBOARD])
def test_no_request_to_the_dashboard_api_gets_a_5xx(served: Served, method: str, path: str) -> None:
    @SETTINGS
    @given(params=st.fixed_dictionaries({}, optional={"worker_id": texts, "project": texts}), body=bodies,
           extra=headers, admin=st.booleans())
    def run(params: dict[str, str], body: bytes | None, extra: dict[str, str], admin: bool) -> None:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin and "Authorization" not in extra else {}
        with httpx.Client(base_url=served.dashboard, timeout=15) as http:
            answer = http.request(method, _path(path, params), content=body, headers=auth | extra)
        _check(answer, (method, path, params, body, extra))

    run()
