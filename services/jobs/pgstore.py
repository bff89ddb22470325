"""Jobs in PostgreSQL, for several kernels sharing one queue (``custom.store``:
``postgresql://...``).

Each kernel has an id kept in its data folder (``kernel.id``) and takes jobs for itself:
the one it was submitted to when it has room, else whichever kernel's poller comes
first (``SELECT ... FOR UPDATE SKIP LOCKED``), so each job is taken by exactly one. A
kernel says it lives every poll; when one stops saying so for ``orphanAfter`` seconds,
the others take its jobs back: queued ones and retryable running ones run elsewhere,
other running ones are marked lost (they may have run).

A job left for any kernel, and a job finished, are told on a channel (``NOTIFY
microkernel_jobs``, with the finished job's id); each kernel listens on a connection of
its own, in a thread, and looks for work, or answers those waiting for the job, at once
rather than at its next poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from .model import Job, JobState, LogLine
from .store import COLUMNS, SELECT, JobStore, StoreError, bounded, folder_lock, folder_unlock, where

CHANNEL = "microkernel_jobs"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    n BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key TEXT UNIQUE,
    type TEXT NOT NULL,
    task JSONB NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    project TEXT,
    timeout DOUBLE PRECISION,
    retries INTEGER NOT NULL,
    name TEXT,
    created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures JSONB NOT NULL DEFAULT '[]',
    worker TEXT,
    result JSONB,
    error TEXT,
    progress DOUBLE PRECISION,
    message TEXT,
    log_bytes BIGINT NOT NULL DEFAULT 0,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (priority DESC, n) WHERE state = 'queued' AND owner IS NULL;
CREATE INDEX IF NOT EXISTS jobs_owned ON jobs (owner) WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    level TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS job_kernels (id TEXT PRIMARY KEY, seen DOUBLE PRECISION NOT NULL);
"""
_RETURNING = f"RETURNING {', '.join(COLUMNS)}"
_NOW = "extract(epoch from clock_timestamp())"


def _job(row: tuple[Any, ...]) -> Job:
    d = dict(zip(COLUMNS, row, strict=True))
    d["state"] = JobState(d["state"])
    return Job(**d)


def shown(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "a PostgreSQL server (the address given does not parse)"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def kernel_id(folder: Path) -> str:
    """This kernel's id in a shared store: made once, kept in the data folder."""
    path = folder / "kernel.id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        import uuid

        made = uuid.uuid4().hex[:16]
        path.write_text(made + "\n")
        return made


class PostgresStore(JobStore):
    """Jobs in a PostgreSQL database several kernels may share (see the module docstring)."""

    shared = True

    def __init__(self, url: str, folder: Path, *, orphan_after: float = 30.0) -> None:
        self.where = shown(url)
        self._lock = folder_lock(folder)
        self.owner = kernel_id(folder)
        self.orphan_after = orphan_after
        self._url = url
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            with self._db.transaction():  # two kernels starting at once make the tables once
                self._db.execute("SELECT pg_advisory_xact_lock(7426001)")
                self._db.execute(_SCHEMA)
        except psycopg.Error as exc:
            folder_unlock(self._lock)
            raise StoreError(f"cannot open the job store at {self.where}: {str(exc).strip()}") from None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where} kernel={self.owner}>"

    def _run(self, query: str, args: Any = ()) -> psycopg.Cursor[Any]:
        if self._db.closed:  # the server went away and came back: one new connection
            self._db = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        return self._db.execute(query, args)

    def add(self, job: Job) -> tuple[Job, bool]:
        values = (job.id, job.key, job.type, Jsonb(job.task), job.state.value, job.priority, job.project,
                  job.timeout, job.retries, job.name, job.created)
        row = self._run(
            "INSERT INTO jobs (id, key, type, task, state, priority, project, timeout, retries, name, created) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING {_RETURNING}",
            values).fetchone()
        if row is not None:
            return job, True
        existing = self._run(f"{SELECT} WHERE key = %s", (job.key,)).fetchone()
        assert existing is not None  # a key, once kept, stays until purged with its job
        return _job(existing), False

    def claim(self, job_id: str) -> bool:
        row = self._run("UPDATE jobs SET owner = %s WHERE id = %s AND owner IS NULL AND state = 'queued' "
                        "RETURNING 1", (self.owner, job_id)).fetchone()
        return row is not None

    def claim_queued(self, limit: int) -> list[Job]:
        rows = self._run(
            "UPDATE jobs SET owner = %s WHERE n IN (SELECT n FROM jobs WHERE state = 'queued' AND owner IS NULL "
            f"ORDER BY priority DESC, n LIMIT %s FOR UPDATE SKIP LOCKED) {_RETURNING}", (self.owner, limit)).fetchall()
        return sorted((_job(r) for r in rows), key=lambda j: (-j.priority, j.created))

    def beat(self) -> list[Job]:
        self._run(f"INSERT INTO job_kernels (id, seen) VALUES (%s, {_NOW}) "
                  "ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen", (self.owner,))
        dead = f"SELECT id FROM job_kernels WHERE seen < {_NOW} - %s AND id <> %s"
        with self._db.transaction():
            self._run(f"UPDATE jobs SET owner = NULL, state = 'queued' WHERE owner IN ({dead}) "
                      "AND (state = 'queued' OR retries > 0) AND state IN ('queued', 'running')",
                      (self.orphan_after, self.owner))
            rows = self._run(
                f"UPDATE jobs SET state = 'lost', finished = {_NOW}, error = 'its kernel (' || owner || ') stopped "
                f"while the job ran, and it was not retryable (retries 0): it may or may not have run' "
                f"WHERE owner IN ({dead}) AND state = 'running' {_RETURNING}",
                (self.orphan_after, self.owner)).fetchall()
        return [_job(r) for r in rows]

    def listen(self, news: Callable[[str], object]) -> None:
        self._listener = threading.Thread(target=self._listen, args=(news,), name="job store listener",
                                          daemon=True)
        self._listener.start()

    def _listen(self, news: Callable[[str], object]) -> None:
        while not self._closing.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    news("")  # whatever was told while no one listened here
                    while not self._closing.is_set():
                        for told in conn.notifies(timeout=0.5):
                            news(told.payload)
            except psycopg.Error:  # the server is away (the poller says so): listen again later
                self._closing.wait(1.0)

    def tell(self) -> None:
        self._run("SELECT pg_notify(%s, '')", (CHANNEL,))

    def get(self, job_id: str) -> Job | None:
        row = self._run(f"{SELECT} WHERE id = %s", (job_id,)).fetchone()
        return _job(row) if row else None

    def select(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
               limit: int = 100, max_bytes: int | None = None) -> list[Job]:
        clause, args = where(mark="%s", state=state, project=project, type=type)
        # On a connection of its own, so that it may run in a thread (see counts()).
        with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as db:
            return bounded(db.execute(f"{SELECT}{clause} ORDER BY n DESC LIMIT %s", (*args, limit)), max_bytes,
                           _job)

    def counts(self) -> dict[tuple[str, str], int]:
        # A scan of every job, on a connection of its own: it may run in a thread while the
        # event loop uses the store's.
        with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as db:
            rows = db.execute("SELECT state, type, COUNT(*) FROM jobs GROUP BY state, type").fetchall()
        return {(state, kind): n for state, kind, n in rows}

    def started(self, job_id: str, attempt: int, worker: str | None) -> None:
        self._run("UPDATE jobs SET state = 'running', attempts = %s, worker = %s, started = COALESCE(started, %s) "
                  "WHERE id = %s AND owner = %s", (attempt, worker, time.time(), job_id, self.owner))

    def progressed(self, job_id: str, fraction: float, message: str | None) -> None:
        self._run("UPDATE jobs SET progress = %s, message = %s WHERE id = %s", (fraction, message, job_id))

    def finished(self, job: Job) -> None:
        result = Jsonb(job.result) if job.result is not None else None
        self._run("UPDATE jobs SET state = %s, result = %s, error = %s, finished = %s, attempts = %s, failures = %s, "
                  "progress = %s, message = %s WHERE id = %s",
                  (job.state.value, result, job.error, job.finished, job.attempts, Jsonb(job.failures), job.progress,
                   job.message, job.id))
        self._run("SELECT pg_notify(%s, %s)", (CHANNEL, job.id))  # after the commit above: others see it

    def log(self, job_id: str, level: str, line: str, limit: int) -> int | None:
        size = len(line.encode())
        with self._db.transaction():
            row = self._run("SELECT log_bytes FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None or row[0] > limit:
                return None
            if row[0] + size > limit:
                line, size = f"(log over {limit} bytes: later lines are dropped)", limit + 1 - row[0]
                level = "warning"
            seq = self._run("SELECT COALESCE(MAX(seq), 0) + 1 FROM job_logs WHERE job_id = %s",
                            (job_id,)).fetchone()[0]  # type: ignore[index]  # an aggregate always has a row
            self._run("INSERT INTO job_logs VALUES (%s, %s, %s, %s, %s)", (job_id, seq, time.time(), level, line))
            self._run("UPDATE jobs SET log_bytes = log_bytes + %s WHERE id = %s", (size, job_id))
        return int(seq)

    def logs(self, job_id: str, after: int = 0) -> list[LogLine]:
        rows = self._run("SELECT seq, at, level, line FROM job_logs WHERE job_id = %s AND seq > %s ORDER BY seq",
                         (job_id, after)).fetchall()
        return [LogLine(*r) for r in rows]

    def unfinished(self) -> list[Job]:
        rows = self._run(f"{SELECT} WHERE owner = %s AND state IN ('queued', 'running') ORDER BY n",
                         (self.owner,)).fetchall()
        return [_job(r) for r in rows]

    def purge(self, before: float) -> int:
        with self._db.transaction():
            self._run("DELETE FROM job_logs WHERE job_id IN (SELECT id FROM jobs WHERE finished < %s)", (before,))
            count = self._run("DELETE FROM jobs WHERE finished < %s", (before,)).rowcount
        return count

    def close(self) -> None:
        self._closing.set()
        try:
            self._db.close()
            if self._listener is not None:
                self._listener.join(2.0)  # it looks at _closing twice a second
        finally:
            folder_unlock(self._lock)

