"""``kernel submit``, ``kernel jobs``, ``kernel job``, ``kernel logs``, ``kernel cancel``:
the job API from a shell. Each takes ``--api URL`` and ``--token-file FILE`` (else the
token is found as the Python client finds it) and prints JSON with ``--json``. A refused
request prints the API's reason and exits with 2; an unreachable API exits with 1."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel.commands import Command

DEFAULT_API = "http://127.0.0.1:8786"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=DEFAULT_API, metavar="URL", help=f"the job API (default {DEFAULT_API})")
    parser.add_argument("--token-file", metavar="FILE", help="file with the API's token (else $MICROKERNEL_JOBS_TOKEN"
                                                             " or the kernel's data folder)")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--service", help="a service's @distributed method (with --method)")
    what.add_argument("--function", metavar="MODULE:FUNCTION", help="a function by reference")
    what.add_argument("--module", help="python -m MODULE, with the arguments after --")
    what.add_argument("--code", help="Python source (its `result` variable is the result; allowCode)")
    what.add_argument("--shell", action="store_true", help="the command after -- (allowShell)")
    what.add_argument("--http", metavar="URL", help="an HTTP request to URL (with --http-method, --data)")
    what.add_argument("--body", metavar="JSON|@FILE|-", help="the whole job request as JSON (- reads stdin)")
    p.add_argument("--method", help="the method, with --service")
    p.add_argument("--http-method", default=None, help="GET (default), POST...")
    p.add_argument("--data", help="the HTTP request's body")
    p.add_argument("--arg", action="append", default=[], metavar="JSON", help="a positional argument (repeatable)")
    p.add_argument("--kwargs", metavar="JSON", help="keyword arguments, a JSON object")
    p.add_argument("--priority", type=int, help="0-10, higher first (default 5)")
    p.add_argument("--project", help="counts against this project's limit")
    p.add_argument("--timeout", type=float, help="seconds the job may run")
    p.add_argument("--retries", type=int, help="runs again if its worker (or the kernel) dies")
    p.add_argument("--key", help="idempotency key: submitting it again returns the same job")
    p.add_argument("--name", help="a name to show")
    p.add_argument("--wait", action="store_true", help="wait and print the result (exit 1 unless it succeeds)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="after --: the command or the module's arguments")


def _json_value(raw: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    """The job request the ``kernel submit`` arguments describe.

    :raises ValueError: they do not describe one (the message says why).
    """
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    body: dict[str, Any]
    if args.body is not None:
        raw = sys.stdin.read() if args.body == "-" else Path(args.body[1:]).read_text() \
            if args.body.startswith("@") else args.body
        body = _json_value(raw, "--body")
        if not isinstance(body, dict):
            raise ValueError("--body must be a JSON object")
    elif args.service is not None:
        if not args.method:
            raise ValueError("--service needs --method")
        body = {"service": args.service, "method": args.method}
    elif args.function is not None:
        body = {"function": args.function}
    elif args.module is not None:
        body = {"module": args.module, "argv": rest}
    elif args.code is not None:
        body = {"code": args.code}
    elif args.shell:
        if not rest:
            raise ValueError("--shell runs the command after --, e.g. kernel submit --shell -- ls -l")
        body = {"command": rest}
    else:
        body = {"url": args.http, "method": args.http_method or "GET"}
        if args.data is not None:
            body["body"] = args.data
    if args.arg:
        body["args"] = [_json_value(a, f"--arg {a}") for a in args.arg]
    if args.kwargs:
        body["kwargs"] = _json_value(args.kwargs, "--kwargs")
    for name in ("priority", "project", "timeout", "retries", "key", "name"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    return body


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return Client(args.api, token=token)


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapper(args: argparse.Namespace) -> int:
        from .client import ClientError

        try:
            return run(args)
        except ClientError as exc:
            print(f"kernel {args.command}: {exc}", file=sys.stderr)
            return 2 if exc.status is not None and exc.status < 500 else 1
        except OSError as exc:
            print(f"kernel {args.command}: {exc}", file=sys.stderr)
            return 2
    return wrapper


def _print_job(job: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(job.to_json(), indent=2))
        return
    for key, value in job.to_json().items():
        if value is not None and key != "task":
            if key in ("created", "started", "finished"):
                value = datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
            print(f"{key:>10}  {value if not isinstance(value, dict | list) else json.dumps(value)}")
    print(f"{'task':>10}  {json.dumps(job.task)}")


def _submit(args: argparse.Namespace) -> int:
    body = request_of(args)
    with _client(args) as client:
        job = client.submit(body)
        if not args.wait:
            if args.json:
                _print_job(job, True)
            else:
                print(job.id)
            return 0
        job = client.wait(job.id)
    _print_job(job, args.json) if args.json else print(json.dumps(job.result) if job.state == "succeeded"
                                                       else f"{job.state}: {job.error}")
    return 0 if job.state == "succeeded" else 1


def _jobs_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--state", help="queued, running, succeeded, failed, cancelled or lost")
    p.add_argument("--project")
    p.add_argument("--type", help="the task type")
    p.add_argument("--limit", type=int, default=50)


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list(state=args.state, project=args.project, type=args.type, limit=args.limit)
    if args.json:
        print(json.dumps([j.to_json() for j in jobs], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for name in ("id", "state", "type", "name", "project", "created"):
        table.add_column(name, no_wrap=True)
    table.add_column("error", overflow="ellipsis", max_width=60)
    for j in jobs:
        created = datetime.datetime.fromtimestamp(j.created).strftime("%m-%d %H:%M:%S")
        table.add_row(j.id, j.state.value, j.type, j.name or "", j.project or "", created, j.error or "")
    Console(width=max(Console().width, 160)).print(table)
    return 0


def _id_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", help="the job's id")
    _common(p)


def _job(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(client.status(args.id), args.json)
    return 0


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    _id_arguments(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing lines until the job finishes")


def _logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for line in client.logs(args.id, follow=args.follow):
            print(json.dumps(line._asdict()) if args.json else line.line, flush=True)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(client.cancel(args.id), args.json)
    return 0


COMMANDS = {
    "submit": Command(help="submit a job to a running kernel", arguments=_submit_arguments, run=_guarded(_submit),
                      description="Submit a job to a kernel's job API (kernel run serves it); prints its id."),
    "jobs": Command(help="list a running kernel's jobs", arguments=_jobs_arguments, run=_guarded(_jobs)),
    "job": Command(help="show one job", arguments=_id_arguments, run=_guarded(_job)),
    "logs": Command(help="print a job's log (--follow: as it is written)", arguments=_logs_arguments,
                    run=_guarded(_logs)),
    "cancel": Command(help="cancel a job", arguments=_id_arguments, run=_guarded(_cancel)),
}
