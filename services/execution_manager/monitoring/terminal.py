"""``kernel status``: a running kernel's workers, nodes, load and queue, from its HTTP
API (``custom.http`` of the execution manager), as rich tables, JSON or a live view."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kernel.errors import KernelError

STATE_STYLE = {"available": "green", "running": "green", "draining": "yellow", "unhealthy": "yellow",
               "registering": "yellow", "failed": "red", "terminated": "red"}


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url/api/status``.

    :raises KernelError: nothing answers there, or the answer is not a status document.
    """
    target = url.rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            data = json.load(response)
    except urllib.error.HTTPError as exc:
        raise KernelError(f"{target} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KernelError(f"no kernel answers at {url} ({reason}); is `kernel run` going? "
                          "It prints its dashboard address when it starts") from None
    except json.JSONDecodeError:
        raise KernelError(f"{target} did not answer with JSON: is that a kernel's dashboard?") from None
    if not isinstance(data, dict) or "pool" not in data:
        raise KernelError(f"{target} did not answer with a kernel status document")
    return data


def _size(n: float | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s"


WIDE = 120  # columns from which every worker column is shown; below, the ones that matter most


def _call(w: dict[str, Any]) -> str:
    call = w["calls"][0] if w["calls"] else None
    if call is None:
        return "idle"
    progress = f" {call['progress']:.0%}" if call.get("progress") is not None else ""
    return f"{call['call']} [task {call.get('task_id')}]{progress}"


def workers_table(workers: list[dict[str, Any]], width: int = WIDE) -> Table:
    """The workers as a table; below ``WIDE`` columns, the columns that matter most."""
    columns = ["id", "kind", "host", "pid", "state", "call", "elapsed", "done", "failed", "CPU", "RSS", "heartbeat"]
    if width < WIDE:
        columns = ["id", "pid", "state", "call", "done", "CPU", "RSS"]
    table = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        whole = col in ("id", "pid", "state")
        table.add_column(col, justify="right" if col in ("pid", "done", "failed", "CPU", "RSS") else "left",
                         no_wrap=True, overflow="fold" if whole else "ellipsis",
                         min_width=max([len(str(w[col] or "-")) for w in workers] + [len(col)]) if whole else None,
                         ratio=1 if col == "call" else None)
    for w in workers:
        call = w["calls"][0] if w["calls"] else None
        cells = {
            "id": w["id"], "kind": w["node_type"], "host": w["host"] or "-", "pid": str(w["pid"] or "-"),
            "state": Text(w["state"], style=STATE_STYLE.get(w["state"], "")), "call": Text(_call(w)),  # not markup
            "elapsed": f"{_secs(call['elapsed'])} / {_secs(call['timeout']) if call['timeout'] else 'none'}"
            if call else "",
            "done": str(w["done"]), "failed": str(w["failed"]), "CPU": f"{w['cpu_percent']:.0f}%",
            "RSS": _size(w["memory_rss"]),
            "heartbeat": _secs(w["heartbeat_age"]) if w["heartbeat_age"] is not None else "-",
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def worker_detail(w: dict[str, Any]) -> Table:
    """One worker, a field a line (``kernel worker ID``)."""
    table = Table(title=f"worker {w['id']}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    exit_ = w.get("last_exit")  # why its predecessor under this id ended
    rows = [
        ("state", Text(w["state"], style=STATE_STYLE.get(w["state"], ""))), ("kind", w["node_type"]),
        ("pid", str(w["pid"] or "-")), ("host", w["host"] or "-"), ("node", w["node"] or "-"),
        ("running", Text(", ".join(f"{c['call']} [task {c['task_id']}] {_secs(c['elapsed'])}"
                              + (f" {c['progress']:.0%}" if c.get("progress") is not None else "")
                              + (f" {c['message']}" if c.get("message") else "") for c in w["calls"]) or "idle")),
        ("calls", f"{w['done']} done, {w['failed']} failed"), ("CPU", f"{w['cpu_percent']:.0f}%"),
        ("RSS", _size(w["memory_rss"])), ("pinned", str(w["pinned"])), ("restarts", str(w.get("restarts", 0))),
        ("last exit", exit_ or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def render(status: dict[str, Any], width: int = WIDE) -> Group:
    """The status as rich renderables for a terminal ``width`` columns wide: a header
    line, workers, nodes, last decision. Ids, pids and states are never cut: narrower
    terminals drop the columns that matter less (host, elapsed, heartbeat...) and
    shorten what a call is."""
    p = status["pool"]
    load = p["load"]
    wide = width >= WIDE
    queue = " ".join(f"p{k}:{v}" for k, v in p["queued_by_priority"].items()) or "empty"
    starting = f", +{p['starting']} starting" if p["starting"] else ""
    header = Text.assemble(
        ("workers ", "bold"), f"{p['workers']} (min {p['min_workers']}, max {p['max_workers']}"
        f"{starting})   ",
        ("load ", "bold"), f"CPU {load['cpu_percent']:.0f}%  memory {load['memory_percent']:.0f}%   ",
        ("calls ", "bold"), f"running {p['running']}  queued {p['queued']} ({queue})  held {p.get('held', 0)}  "
        f"done {p['done']}  failed {p['failed']}  retried {p['retried']}  {p['rate']:.1f}/s",
    )
    parts: list[Any] = [header, workers_table(status["workers"], width)]
    if status["nodes"]:
        node_columns = ["id", "address", "state", "slots", "running", "CPU", "memory", "heartbeat"]
        if not wide:
            node_columns = ["id", "state", "slots", "running", "CPU", "memory"]
        nodes = Table(title="nodes", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for col in node_columns:
            nodes.add_column(col, no_wrap=True, overflow="fold" if col in ("id", "state") else "ellipsis")
        for n in status["nodes"]:
            cells = {"id": n["id"], "address": n["address"], "slots": str(n["slots"]), "running": str(n["running"]),
                     "state": Text(n["state"], style=STATE_STYLE.get(n["state"], "")),
                     "CPU": f"{n['cpu_percent']:.0f}%", "memory": f"{n['memory_percent']:.0f}%",
                     "heartbeat": _secs(n["heartbeat_age"])}
            nodes.add_row(*(cells[c] for c in node_columns))
        parts.append(nodes)
    if status.get("nodes_problem"):
        parts.append(Text(f"nodes: {status['nodes_problem']}", style="red"))
    if status["scaling"]["last"]:
        parts.append(Text(f"autoscaler: {status['scaling']['last']}", style="dim"))
    if status["failures"]:
        last = status["failures"][0]
        parts.append(Text(f"last failure: {last['call']} on {last.get('worker_id') or '?'}: {last['error']}",
                          style="red"))
    return Group(*parts)


def show_status(url: str, *, as_json: bool = False, watch: float | None = None) -> int:
    """Print the status once, or redraw it every ``watch`` seconds until Ctrl-C."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url takes http://HOST:PORT, got {url!r}")
    if watch is not None and watch <= 0:
        raise ValueError(f"--watch takes a positive number of seconds, got {watch:g}")
    console = Console()
    if watch is None:
        status = fetch(url)
        if as_json:
            print(json.dumps(status, indent=2))
        else:
            console.print(render(status, console.width))
        return 0
    try:
        if as_json:  # one document per line, for scripts that follow the pool
            while True:
                print(json.dumps(fetch(url)), flush=True)
                time.sleep(watch)
        with Live(render(fetch(url), console.width), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(render(fetch(url), console.width), refresh=True)
    except KeyboardInterrupt:
        return 0
