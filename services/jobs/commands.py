"""``kernel submit``, ``kernel jobs``, ``kernel job``, ``kernel logs``, ``kernel cancel``:
the job API from a shell. Each takes ``--api URL`` and ``--token-file FILE`` (else the
token is found as the Python client finds it) and prints JSON with ``--json``. A refused
request prints the API's reason and exits with 2; an unreachable API exits with 1."""

from __future__ import annotations

import datetime
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from kernel.commands import CommandFailed, RequestRefused, examples, json_option

DEFAULT_URL = "http://127.0.0.1:8791"  # client.DEFAULT_URL, kept here so `kernel --help` imports no client
_F = TypeVar("_F", bound=Callable[..., Any])
Connect = Callable[[], Any]  # opens a job API client (client.Client), imported only when a verb runs
_JSON_START = (*'[{"-0123456789', "true", "false", "null")


def _reaching(f: _F) -> _F:
    """``--api``, ``--token-file`` and the client errors every job verb shares: the verb
    gets ``connect()``, which opens a client (after the verb has checked its flags)."""

    @click.option("--api", default=DEFAULT_URL, show_default=True, metavar="URL", help="the job API")
    @click.option("--token-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                  help="file with the API's token (else $MICROKERNEL_JOBS_TOKEN or the kernel's data folder)")
    @functools.wraps(f)
    def wrapper(*args: Any, api: str, token_file: str | None, **kwargs: Any) -> Any:
        from .client import Client, ClientError

        def connect() -> Client:
            token = Path(token_file).read_text().strip() if token_file else None
            return Client(api, token=token)

        try:
            return f(connect, *args, **kwargs)
        except ClientError as exc:
            if exc.status is not None and exc.status < 500:
                raise RequestRefused(str(exc)) from None
            raise CommandFailed(str(exc)) from None
        except OSError as exc:
            raise RequestRefused(str(exc)) from None
    return wrapper  # type: ignore[return-value]


def json_value(raw: str, flag: str) -> Any:
    """A ``--arg``/``--kwargs`` value: JSON (``4``, ``true``, ``"x"``, ``[1, 2]``), and a bare
    word that is not JSON as a string (``--arg hello``).

    :raises click.BadParameter: it looks like JSON (a number, a list...) but is not valid.
    """
    try:
        return json.loads(raw)
    except ValueError as exc:
        if raw.strip().startswith(_JSON_START):
            raise click.BadParameter(f"{raw!r} is not valid JSON ({exc}); quote a string as '\"{raw}\"'",
                                     param_hint=flag) from None
        return raw


def request_of(what: Mapping[str, Any], rest: Sequence[str]) -> dict[str, Any]:
    """The job request ``kernel submit``'s flags (``what``, by name) describe.

    :raises click.UsageError: they do not describe one (the message says why).
    """
    body: dict[str, Any]
    if what.get("body") is not None:
        given = what["body"]
        raw = sys.stdin.read() if given == "-" else Path(given[1:]).read_text() if given.startswith("@") else given
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--body") from None
        if not isinstance(body, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--body")
    elif what.get("service") is not None:
        if not what.get("method"):
            raise click.UsageError("--service needs --method")
        body = {"service": what["service"], "method": what["method"]}
    elif what.get("function") is not None:
        body = {"function": what["function"]}
    elif what.get("module") is not None:
        body = {"module": what["module"], "argv": list(rest)}
    elif what.get("code") is not None:
        body = {"code": what["code"]}
    elif what.get("shell"):
        if not rest:
            raise click.UsageError("--shell runs the command after --, e.g. kernel submit --shell -- ls -l")
        body = {"command": list(rest)}
    elif what.get("http") is not None:
        body = {"url": what["http"], "method": what.get("http_method") or "GET"}
        if what.get("data") is not None:
            body["body"] = what["data"]
    else:
        raise click.UsageError("say what to run: --function, --service, --module, --code, --shell, --http or --body")
    if what.get("args"):
        body["args"] = [json_value(a, "--arg") for a in what["args"]]
    if what.get("kwargs"):
        kwargs = json_value(what["kwargs"], "--kwargs")
        if not isinstance(kwargs, dict):
            raise click.BadParameter("must be a JSON object, e.g. '{\"n\": 3}'", param_hint="--kwargs")
        body["kwargs"] = kwargs
    for name in ("priority", "project", "timeout", "retries", "key", "name"):
        if what.get(name) is not None:
            body[name] = what[name]
    return body


def _print_job(job: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(job.to_json(), indent=2))
        return
    for key, value in job.to_json().items():
        if value is not None and key != "task":
            if key in ("created", "started", "finished"):
                value = datetime.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
            click.echo(f"{key:>10}  {value if not isinstance(value, dict | list) else json.dumps(value)}")
    click.echo(f"{'task':>10}  {json.dumps(job.task)}")


@click.command(epilog=examples(
    "kernel submit --function math:factorial --arg 20 --wait",
    "kernel submit --function mytasks:work --arg '[1, 2]' --kwargs '{\"scale\": 3}'",
    "kernel submit --service prime-counter --method count_range --arg 0 --arg 100000 --wait",
    "kernel submit --module mytool --wait -- --input data.csv",
    "kernel submit --shell -- ls -l   # with the job service's allowShell",
    "kernel submit --body @job.json"), context_settings={"allow_interspersed_args": False})
@click.option("--service", help="a service's @distributed method (with --method)")
@click.option("--method", help="the method, with --service")
@click.option("--function", metavar="MODULE:FUNCTION", help="a function by reference (the kernel's folder is on "
                                                               "its import path)")
@click.option("--module", help="python -m MODULE, with the arguments after --")
@click.option("--code", help="Python source (its `result` variable is the result; allowCode)")
@click.option("--shell", is_flag=True, help="the command after -- (allowShell)")
@click.option("--http", metavar="URL", help="an HTTP request to URL (with --http-method, --data)")
@click.option("--http-method", help="GET (default), POST...")
@click.option("--data", help="the HTTP request's body")
@click.option("--body", metavar="JSON|@FILE|-", help="the whole job request as JSON (- reads stdin)")
@click.option("--arg", "args", multiple=True, metavar="JSON",
              help="a positional argument, as JSON: 4, 2.5, true, '\"text\"', '[1, 2]'; a bare word is a string "
                   "(repeatable)")
@click.option("--kwargs", metavar="JSON", help="keyword arguments, a JSON object: '{\"n\": 3}'")
@click.option("--priority", type=click.IntRange(0, 10), help="0-10, higher first (default 5)")
@click.option("--project", help="counts against this project's limit")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="seconds the job may run")
@click.option("--retries", type=click.IntRange(min=0), help="runs again if its worker (or the kernel) dies")
@click.option("--key", help="idempotency key: submitting it again returns the same job")
@click.option("--name", help="a name to show")
@click.option("--wait", is_flag=True, help="wait and print the result (exit 1 unless it succeeds)")
@json_option
@click.argument("rest", nargs=-1, type=click.UNPROCESSED)
@_reaching
def submit(connect: Connect, rest: tuple[str, ...], wait: bool, as_json: bool, **given: Any) -> int:
    """Submit a job to a running kernel's job API (kernel run serves it); prints its id,
    or with --wait its result. Exactly one of --function, --service, --module, --code,
    --shell, --http or --body says what runs."""
    kinds = [k for k in ("service", "function", "module", "code", "http", "body") if given.get(k) is not None]
    kinds += ["shell"] if given.get("shell") else []
    if len(kinds) > 1:
        raise click.UsageError(f"give one of --{', --'.join(kinds)}, not several")
    if rest and kinds[:1] not in (["module"], ["shell"], ["body"]):
        raise click.UsageError(f"unexpected arguments {' '.join(rest)!r}: only --module and --shell take "
                               "arguments (after --)")
    body = request_of(given, rest)
    with connect() as client:
        job = client.submit(body)
        if not wait:
            _print_job(job, True) if as_json else click.echo(job.id)
            return 0
        job = client.wait(job.id)
    _print_job(job, True) if as_json else click.echo(json.dumps(job.result) if job.state == "succeeded"
                                                     else f"{job.state}: {job.error}")
    return 0 if job.state == "succeeded" else 1


@click.command(name="jobs", epilog=examples("kernel jobs", "kernel jobs --state failed --limit 10",
                                            "kernel jobs --project ml --json", "kernel jobs --after 7f3c..."))
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled", "lost"]))
@click.option("--project", help="only this project's")
@click.option("--type", "type_", metavar="TYPE", help="only this task type's (function, service, shell...)")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--after", metavar="ID", help="the page after the one ending with this job (the last page says it)")
@json_option
@_reaching
def list_jobs(connect: Connect, state: str | None, project: str | None, type_: str | None, limit: int,
              after: str | None, as_json: bool) -> None:
    """List a running kernel's jobs, newest first, a page at a time."""
    with connect() as client:
        jobs = client.list(state=state, project=project, type=type_, limit=limit, after=after)
    if as_json:
        click.echo(json.dumps([j.to_json() for j in jobs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for name in ("id", "state", "type", "name", "project", "created"):
        table.add_column(name, no_wrap=True)
    table.add_column("error", overflow="ellipsis", max_width=60)
    for j in jobs:
        created = datetime.datetime.fromtimestamp(j.created).strftime("%m-%d %H:%M:%S")
        table.add_row(j.id, j.state.value, j.type, j.name or "", j.project or "", created, j.error or "")
    console = Console(width=max(Console().width, 160))
    console.print(table)
    if jobs.next is not None:
        console.print(f"more: kernel jobs --after {jobs.next}", style="dim", markup=False, highlight=False)


@click.command(epilog=examples("kernel job 01J9Z...", "kernel job 01J9Z... --json"))
@click.argument("job_id", metavar="ID")
@json_option
@_reaching
def job(connect: Connect, job_id: str, as_json: bool) -> None:
    """Show one job: its state, times, result or error."""
    with connect() as client:
        _print_job(client.status(job_id), as_json)


@click.command(epilog=examples("kernel logs 01J9Z...", "kernel logs 01J9Z... --follow"))
@click.argument("job_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="keep printing lines until the job finishes")
@json_option
@_reaching
def logs(connect: Connect, job_id: str, follow: bool, as_json: bool) -> None:
    """Print a job's log (--follow: as it is written)."""
    with connect() as client:
        for line in client.logs(job_id, follow=follow):
            click.echo(json.dumps(line._asdict()) if as_json else line.line)
            sys.stdout.flush()


@click.command(epilog=examples("kernel cancel 01J9Z...", "kernel cancel 01J9Z... --json"))
@click.argument("job_id", metavar="ID")
@click.option("--wait", "wait_for", type=click.FloatRange(min=0), default=10.0, show_default=True,
              metavar="SECONDS", help="how long to wait for a running job to end before printing its state")
@json_option
@_reaching
def cancel(connect: Connect, job_id: str, wait_for: float, as_json: bool) -> None:
    """Cancel a job, then print its state: a queued job never runs; a running one is
    stopped (its worker ends and is replaced)."""
    with connect() as client:
        done = client.cancel(job_id)
        if not done.state.finished and wait_for > 0:
            done = client.wait(job_id, timeout=wait_for)
    _print_job(done, as_json)


COMMANDS: dict[str, click.Command] = {"submit": submit, "jobs": list_jobs, "job": job, "logs": logs, "cancel": cancel}
