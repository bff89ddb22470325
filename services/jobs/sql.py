"""The job store's SQL, written once over two dialects (SQLite, PostgreSQL).

One set of tables, prefixed because a PostgreSQL database is often shared:
``mk_jobs``, ``mk_job_logs``, ``mk_job_kernels`` (the kernels sharing a store) and
``mk_schema``, whose one row holds the schema version. A store of an earlier version is
migrated when a kernel opens it; one of a later version is refused, naming both.

Version 1 (microkernel-em 0.1.0) named its tables ``jobs`` and ``logs`` (SQLite) or
``jobs``, ``job_logs`` and ``job_kernels`` (PostgreSQL). Migrating renames them and
leaves empty tables of the old names and shapes behind whose every row breaks a check
named with both versions: a kernel of version 1 opens the store as before, then its
first write (a PostgreSQL kernel writes at once, to say it lives) is refused with
``job store at schema v2: this kernel speaks v1, upgrade it``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .model import Job, JobState

SCHEMA_VERSION = 2
JOBS, LOGS, KERNELS, SCHEMA = "mk_jobs", "mk_job_logs", "mk_job_kernels", "mk_schema"
COLUMNS = ("id", "key", "type", "task", "state", "priority", "project", "timeout", "retries", "name", "created",
           "started", "finished", "attempts", "failures", "worker", "result", "error", "progress", "message")
SELECT = f"SELECT {', '.join(COLUMNS)} FROM {JOBS}"  # a Job's fields, in the order of its row
# What a kernel of version 1 finds under the old names once the store is migrated.
REFUSAL = f"job store at schema v{SCHEMA_VERSION}: this kernel speaks v1, upgrade it"


@dataclass(frozen=True)
class Dialect:
    """What differs between the two: placeholders, column types, JSON, indexes, locks."""

    name: str
    mark: str  # the driver's placeholder
    serial: str  # an auto-numbered primary key
    real: str
    big: str
    json: str  # the type of a JSON column
    indexes: tuple[str, ...]  # CREATE INDEX statements (partial indexes: the jobs not finished)
    lock_row: str  # appended to a SELECT that reads a row it will update in the same transaction
    to_json: Callable[[Any], Any]  # a value for a JSON column
    from_json: Callable[[Any], Any]  # a JSON column's value as read

    def q(self, query: str) -> str:
        """``query`` written with ``?`` placeholders, in this dialect."""
        return query if self.mark == "?" else query.replace("?", self.mark)


def _identity(value: Any) -> Any:
    return value


SQLITE = Dialect(
    "sqlite", "?", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "INTEGER", "TEXT",
    # Only the jobs not finished: an index of every job by state moved an entry across the
    # index at each change of state, and cost a third of each job's writes.
    (f"CREATE INDEX IF NOT EXISTS mk_jobs_unfinished ON {JOBS} (n) WHERE state IN ('queued', 'running')",),
    "", json.dumps, json.loads,
)


def postgresql(jsonb: Callable[[Any], Any]) -> Dialect:
    """PostgreSQL's dialect (``jsonb``: psycopg's ``Jsonb`` adapter)."""
    return Dialect(
        "postgresql", "%s", "BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", "BIGINT", "JSONB",
        (f"CREATE INDEX IF NOT EXISTS mk_jobs_waiting ON {JOBS} (priority DESC, n) "
         "WHERE state = 'queued' AND owner IS NULL",
         f"CREATE INDEX IF NOT EXISTS mk_jobs_owned ON {JOBS} (owner) WHERE state IN ('queued', 'running')"),
        " FOR UPDATE", jsonb, _identity,
    )


def schema(d: Dialect) -> list[str]:
    """The statements that make the tables of this version (idempotent)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {JOBS} (
            n {d.serial}, id TEXT NOT NULL UNIQUE, key TEXT UNIQUE, type TEXT NOT NULL, task {d.json} NOT NULL,
            state TEXT NOT NULL, priority INTEGER NOT NULL, project TEXT, timeout {d.real},
            retries INTEGER NOT NULL, name TEXT, created {d.real} NOT NULL, started {d.real}, finished {d.real},
            attempts INTEGER NOT NULL DEFAULT 0, failures {d.json} NOT NULL DEFAULT '[]', worker TEXT,
            result {d.json}, error TEXT, progress {d.real}, message TEXT, log_bytes {d.big} NOT NULL DEFAULT 0,
            owner TEXT)""",
        *d.indexes,
        f"""CREATE TABLE IF NOT EXISTS {LOGS} (
            job_id TEXT NOT NULL, seq INTEGER NOT NULL, at {d.real} NOT NULL, level TEXT NOT NULL,
            line TEXT NOT NULL, PRIMARY KEY (job_id, seq))""",
        f"CREATE TABLE IF NOT EXISTS {KERNELS} (id TEXT PRIMARY KEY, seen {d.real} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA} (version INTEGER NOT NULL)",
    ]


# Version 1's tables: their names in each dialect, and the guards left in their place.
_V1 = {"sqlite": {"jobs": JOBS, "logs": LOGS}, "postgresql": {"jobs": JOBS, "job_logs": LOGS,
                                                             "job_kernels": KERNELS}}
_V1_INDEXES = {"sqlite": {"jobs_unfinished": "mk_jobs_unfinished", "jobs_by_state": ""},
               "postgresql": {"jobs_waiting": "mk_jobs_waiting", "jobs_owned": "mk_jobs_owned"}}
_V1_SHAPES = {
    "jobs": "n {big}, id TEXT, key TEXT UNIQUE, type TEXT, task {json}, state TEXT, priority INTEGER, project TEXT, "
            "timeout {real}, retries INTEGER, name TEXT, created {real}, started {real}, finished {real}, "
            "attempts INTEGER, failures {json}, worker TEXT, result {json}, error TEXT, progress {real}, "
            "message TEXT, log_bytes {big}, owner TEXT",
    "logs": "job_id TEXT, seq INTEGER, at {real}, level TEXT, line TEXT",
    "job_logs": "job_id TEXT, seq INTEGER, at {real}, level TEXT, line TEXT",
    "job_kernels": "id TEXT PRIMARY KEY, seen {real}",
}


def migrate(d: Dialect, tables: Iterable[str], run: Callable[[str], Sequence[Any] | None]) -> int:
    """Bring the store to this version; the version it was at (0: new). ``tables``: the
    tables there now; ``run(statement)``: one row of a query's result, or None.

    :raises ValueError: the store is of a later version (the message names both).
    """
    there = set(tables)
    if SCHEMA in there:
        row = run(f"SELECT MAX(version) FROM {SCHEMA}")
        found = int(row[0]) if row and row[0] is not None else SCHEMA_VERSION
        if found > SCHEMA_VERSION:
            raise ValueError(f"the job store is at schema version {found}, written by a later release; this "
                             f"kernel speaks version {SCHEMA_VERSION}: upgrade it (pip install -U microkernel-em)")
        if found < SCHEMA_VERSION:  # no such version yet: 2 is the first with this table
            raise ValueError(f"the job store says schema version {found}, which no release wrote")
        return found
    old = _V1[d.name]
    at = 1 if "jobs" in there else 0
    if at == 1:
        for name, new in old.items():
            if name in there:
                run(f"ALTER TABLE {name} RENAME TO {new}")
        for name, new in _V1_INDEXES[d.name].items():
            run(f"ALTER INDEX IF EXISTS {name} RENAME TO {new}" if d.name == "postgresql"
                else f"DROP INDEX IF EXISTS {name}")
        if d.name == "sqlite":  # version 1 had no owner there (one kernel per store)
            run(f"ALTER TABLE {JOBS} ADD COLUMN owner TEXT")
    for statement in schema(d):
        run(statement)
    if at == 1:  # the old names, refusing what a kernel of version 1 writes
        for name in old:
            shape = _V1_SHAPES[name].format(big=d.big, json=d.json, real=d.real)
            run(f'CREATE TABLE {name} ({shape}, CONSTRAINT "{REFUSAL}" CHECK (1 = 0))')
    run(f"INSERT INTO {SCHEMA} (version) VALUES ({SCHEMA_VERSION})")
    return at


def decode(d: Dialect) -> Callable[[Sequence[Any]], Job]:
    """A ``SELECT`` row (of :data:`SELECT`'s columns) as a :class:`Job`."""
    from_json = d.from_json

    def job(row: Sequence[Any]) -> Job:
        fields = dict(zip(COLUMNS, row, strict=True))
        fields["task"] = from_json(fields["task"])
        fields["failures"] = from_json(fields["failures"])
        fields["state"] = JobState(fields["state"])
        fields["result"] = from_json(fields["result"]) if fields["result"] is not None else None
        return Job(**fields)

    return job
