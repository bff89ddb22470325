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

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from .model import Job
from .sql import COLUMNS, JOBS, KERNELS, postgresql
from .store import SqlStore, StoreError, folder_lock, folder_unlock

CHANNEL = "microkernel_jobs"
_NOW = "extract(epoch from clock_timestamp())"
_RETURNING = f"RETURNING {', '.join(COLUMNS)}"
POSTGRESQL = postgresql(Jsonb)


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


class PostgresStore(SqlStore):
    """Jobs in a PostgreSQL database several kernels may share (see the module docstring)."""

    shared = True
    dialect = POSTGRESQL

    def __init__(self, url: str, folder: Path, *, orphan_after: float = 30.0) -> None:
        self.where = shown(url)
        self._lock = folder_lock(folder)
        self.owner = kernel_id(folder)
        self._mine = (" AND owner = ?", (self.owner,))
        self.orphan_after = orphan_after
        self._url = url
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            with self._db.transaction():  # two kernels starting at once make (or migrate) the tables once
                self._db.execute("SELECT pg_advisory_xact_lock(7426001)")
                tables = [r[0] for r in self._db.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
                self._open(tables)
        except StoreError:
            folder_unlock(self._lock)
            raise
        except psycopg.Error as exc:
            folder_unlock(self._lock)
            raise StoreError(f"cannot open the job store at {self.where}: {str(exc).strip()}") from None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where} kernel={self.owner}>"

    def _run(self, query: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if self._db.closed:  # the server went away and came back: one new connection
            self._db = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        return self._db.execute(self.dialect.q(query), args)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as db:
            yield db

    def _atomic(self) -> contextlib.AbstractContextManager[Any]:
        return self._db.transaction()

    def claim(self, job_id: str) -> bool:
        row = self._run(f"UPDATE {JOBS} SET owner = ? WHERE id = ? AND owner IS NULL AND state = 'queued' "
                        "RETURNING 1", (self.owner, job_id)).fetchone()
        return row is not None

    def claim_queued(self, limit: int) -> list[Job]:
        rows = self._run(
            f"UPDATE {JOBS} SET owner = ? WHERE n IN (SELECT n FROM {JOBS} WHERE state = 'queued' AND owner IS NULL "
            f"ORDER BY priority DESC, n LIMIT ? FOR UPDATE SKIP LOCKED) {_RETURNING}", (self.owner, limit)).fetchall()
        return sorted((self._job(r) for r in rows), key=lambda j: (-j.priority, j.created))

    def beat(self) -> list[Job]:
        self._run(f"INSERT INTO {KERNELS} (id, seen) VALUES (?, {_NOW}) "
                  "ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen", (self.owner,))
        dead = f"SELECT id FROM {KERNELS} WHERE seen < {_NOW} - ? AND id <> ?"
        with self._db.transaction():
            self._run(f"UPDATE {JOBS} SET owner = NULL, state = 'queued' WHERE owner IN ({dead}) "
                      "AND (state = 'queued' OR retries > 0) AND state IN ('queued', 'running')",
                      (self.orphan_after, self.owner))
            rows = self._run(
                f"UPDATE {JOBS} SET state = 'lost', finished = {_NOW}, error = 'its kernel (' || owner || ') stopped "
                f"while the job ran, and it was not retryable (retries 0): it may or may not have run' "
                f"WHERE owner IN ({dead}) AND state = 'running' {_RETURNING}",
                (self.orphan_after, self.owner)).fetchall()
        return [self._job(r) for r in rows]

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
        self._run("SELECT pg_notify(?, '')", (CHANNEL,))

    def finished(self, job: Job) -> None:
        super().finished(job)
        self._run("SELECT pg_notify(?, ?)", (CHANNEL, job.id))  # after the commit above: others see it

    def close(self) -> None:
        self._closing.set()
        try:
            self._db.close()
            if self._listener is not None:
                self._listener.join(2.0)  # it looks at _closing twice a second
        finally:
            folder_unlock(self._lock)
