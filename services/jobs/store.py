"""Where jobs are kept: :class:`JobStore` is the seam; :class:`SqlStore` its queries,
written once over the two dialects of :mod:`.sql`; :class:`SqliteStore` the embedded
default (one file in the data folder, WAL: a write acknowledged survives the kernel's
SIGKILL, as the operating system has it); ``pgstore.PostgresStore`` the shared one.

A kernel holds its data folder (a lock on ``kernel.lock`` in it): a second kernel on the
same folder is refused with a message that names the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kernel.errors import KernelError

from .model import Job, LogLine, Page
from .settings import JobError
from .sql import JOBS, LOGS, SELECT, SQLITE, Dialect, decode, migrate


class StoreError(KernelError):
    """The store cannot be opened or written (the message names it)."""


class JobStore(ABC):
    """What the job service needs of a store. Every method commits before it returns."""

    where: str  # how errors and logs name it

    @abstractmethod
    def add(self, job: Job) -> tuple[Job, bool]:
        """Keep a new job; with a key already known, the job of that key and False."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def select(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
             limit: int = 100, max_bytes: int | None = None, after: str | None = None) -> Page:
        """Jobs, newest first: ``limit`` of them at most, and no more once their stored
        text passes ``max_bytes`` (one at least); with ``after`` (a job id: the last of the
        page before), the ones older than it. Safe to call from a thread.

        :raises JobError: ``after`` names no job (400).
        """

    shared = False  # whether other kernels take jobs from this store too

    def claim(self, job_id: str) -> bool:
        """Take a queued job for this kernel; False when another kernel has it."""
        return True

    def claim_queued(self, limit: int) -> list[Job]:
        """Take up to ``limit`` queued jobs no kernel has taken, highest priority first."""
        return []

    def beat(self) -> list[Job]:
        """Say this kernel lives; take back the jobs of kernels that stopped saying so
        (returns those marked lost: they may have run)."""
        return []

    def listen(self, news: Callable[[str], object]) -> None:
        """From now until :meth:`close`, call ``news(job_id)`` (from any thread) when a
        kernel sharing the store finished a job, and ``news("")`` when one tells
        (:meth:`tell`) that a queued job waits for a taker. A store no other kernel uses
        has nothing to tell."""
        return None

    def tell(self) -> None:
        """Tell the kernels listening that a job waits for a kernel to take it."""
        return None

    @abstractmethod
    def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs the store holds, by (state, type)."""

    @abstractmethod
    def started(self, job_id: str, attempt: int, worker: str | None) -> None:
        """An attempt is about to reach a worker: from now on the job may have run."""

    @abstractmethod
    def progressed(self, job_id: str, fraction: float, message: str | None) -> None:
        """Keep a running job's latest progress (for other kernels, and after a restart)."""

    @abstractmethod
    def finished(self, job: Job) -> None:
        """Keep ``job``'s final state, result or error, and times."""

    @abstractmethod
    def log(self, job_id: str, level: str, line: str, limit: int) -> int | None:
        """Append a log line (its number), unless the job's log is over ``limit`` bytes."""

    @abstractmethod
    def logs(self, job_id: str, after: int = 0) -> list[LogLine]: ...

    @abstractmethod
    def unfinished(self) -> list[Job]:
        """This kernel's jobs queued or running, oldest first: what a restart takes up again."""

    @abstractmethod
    def purge(self, before: float) -> int:
        """Forget jobs finished before ``before`` (seconds since the epoch); how many."""

    @abstractmethod
    def close(self) -> None: ...


def where(*, mark: str, **equal: str | None) -> tuple[str, list[str]]:
    """`` WHERE a = ? AND b = ?`` for the filters given (None: not filtered), and their
    values; ``mark`` is the driver's placeholder."""
    given = {column: value for column, value in equal.items() if value is not None}
    clause = " AND ".join(f"{column} = {mark}" for column in given)
    return (f" WHERE {clause}" if clause else ""), list(given.values())


def bounded(rows: Iterable[Sequence[Any]], max_bytes: int | None, decode: Callable[[Any], Job], limit: int) -> Page:
    """The jobs of ``rows`` (``SELECT`` rows, made jobs by ``decode``; ask for ``limit`` + 1),
    read one by one, ``limit`` at most and until their text passes ``max_bytes`` (the
    first is always kept): a list of large results stays bounded. Its ``next`` is set
    when a row was left."""
    jobs = Page()
    size = 0
    for row in rows:
        size += sum(len(cell) if isinstance(cell, str | bytes) else len(json.dumps(cell, default=str))
                    for cell in row if isinstance(cell, str | bytes | dict | list))
        if len(jobs) == limit or (jobs and max_bytes is not None and size > max_bytes):
            jobs.next = jobs[-1].id
            break
        jobs.append(decode(row))
    return jobs


def folder_lock(folder: Path) -> int:
    """Hold the data folder for this kernel (a lock on ``kernel.lock`` in it).

    :raises StoreError: the folder cannot be made, or another kernel holds it.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # jobs' arguments, results and logs, and the API's token: this user's only
        fd = os.open(folder / "kernel.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the job store in {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"another kernel uses the data folder {folder}; give this one its own "
                         "(custom.dataDir of the jobs service, or $MICROKERNEL_DATA_DIR)") from None
    return fd


def private_files(*paths: Path) -> None:
    """Make ``paths`` readable by this user only: the first made empty if missing (SQLite
    gives its -wal and -shm files the database's mode), those there chmod 600.

    :raises StoreError: one cannot be made or changed.
    """
    try:
        os.close(os.open(paths[0], os.O_RDWR | os.O_CREAT, 0o600))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.chmod(0o600)
    except OSError as exc:
        raise StoreError(f"cannot make {paths[0]} private: {exc.strerror or exc}") from None


def folder_unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class SqlStore(JobStore):
    """The store's queries, once for both dialects (see :mod:`.sql`). A subclass gives
    its connection (:meth:`_run`), a connection for a reading thread (:meth:`_reader`),
    transactions (:meth:`_atomic`), and ``_mine``: the filter of this kernel's jobs."""

    dialect: Dialect
    _mine: tuple[str, tuple[Any, ...]] = ("", ())  # (" AND owner = ?", (owner,)) in a shared store

    def _run(self, query: str, args: Sequence[Any] = ()) -> Any:
        """Run ``query`` (``?`` placeholders) on the store's connection; the cursor."""
        raise NotImplementedError

    def _reader(self) -> contextlib.AbstractContextManager[Any]:
        """A connection of its own, for a read that may run in a thread."""
        raise NotImplementedError

    def _atomic(self) -> contextlib.AbstractContextManager[Any]:
        """One transaction, rows read in it locked until it ends."""
        raise NotImplementedError

    def _open(self, tables: Iterable[str]) -> None:
        """Make or migrate the tables (in a transaction the subclass holds)."""
        def one(statement: str) -> Sequence[Any] | None:
            cursor = self._run(statement)
            return cursor.fetchone() if cursor.description else None

        try:
            self.migrated_from = migrate(self.dialect, tables, one)
        except ValueError as exc:
            raise StoreError(f"{self.where}: {exc}") from None

    def add(self, job: Job) -> tuple[Job, bool]:
        to_json = self.dialect.to_json
        values = (job.id, job.key, job.type, to_json(job.task), job.state.value, job.priority, job.project,
                  job.timeout, job.retries, job.name, job.created)
        cursor = self._run(f"INSERT INTO {JOBS} (id, key, type, task, state, priority, project, timeout, retries, "
                           "name, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                           values)
        if cursor.rowcount == 1:
            return job, True
        existing = self._run(f"{SELECT} WHERE key = ?", (job.key,)).fetchone()
        assert existing is not None  # a key, once kept, stays until purged with its job
        return self._job(existing), False

    def get(self, job_id: str) -> Job | None:
        row = self._run(f"{SELECT} WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def select(self, *, state: str | None = None, project: str | None = None, type: str | None = None,
               limit: int = 100, max_bytes: int | None = None, after: str | None = None) -> Page:
        mark = self.dialect.mark
        clause, args = where(mark=mark, state=state, project=project, type=type)
        with self._reader() as db:  # may run in a thread (see counts())
            if after is not None:
                row = db.execute(f"SELECT n FROM {JOBS} WHERE id = {mark}", (after,)).fetchone()
                if row is None:
                    raise JobError(f"after={after[:40]!r} names no job: give the id of the last job of the page "
                                   "before (the list's 'next')", field="after")
                clause = f"{clause} AND n < {mark}" if clause else f" WHERE n < {mark}"
                args = [*args, row[0]]
            query = f"{SELECT}{clause} ORDER BY n DESC LIMIT {mark}"
            return bounded(db.execute(query, (*args, limit + 1)), max_bytes, self._job, limit)

    def counts(self) -> dict[tuple[str, str], int]:
        # Every row is read (a tenth of a second per 100,000 jobs): on a connection of its
        # own, so it may run in a thread while the event loop writes.
        with self._reader() as db:
            rows = db.execute(f"SELECT state, type, COUNT(*) FROM {JOBS} GROUP BY state, type").fetchall()
        return {(state, kind): n for state, kind, n in rows}

    def started(self, job_id: str, attempt: int, worker: str | None) -> None:
        mine, owner = self._mine
        self._run(f"UPDATE {JOBS} SET state = 'running', attempts = ?, worker = ?, started = COALESCE(started, ?) "
                  f"WHERE id = ?{mine}", (attempt, worker, time.time(), job_id, *owner))

    def progressed(self, job_id: str, fraction: float, message: str | None) -> None:
        self._run(f"UPDATE {JOBS} SET progress = ?, message = ? WHERE id = ?", (fraction, message, job_id))

    def finished(self, job: Job) -> None:
        to_json = self.dialect.to_json
        result = to_json(job.result) if job.result is not None else None
        self._run(f"UPDATE {JOBS} SET state = ?, result = ?, error = ?, finished = ?, attempts = ?, failures = ?, "
                  "progress = ?, message = ? WHERE id = ?",
                  (job.state.value, result, job.error, job.finished, job.attempts, to_json(job.failures),
                   job.progress, job.message, job.id))

    def log(self, job_id: str, level: str, line: str, limit: int) -> int | None:
        size = len(line.encode())
        with self._atomic():  # the size check and the line go together
            row = self._run(f"SELECT log_bytes FROM {JOBS} WHERE id = ?{self.dialect.lock_row}", (job_id,)).fetchone()
            if row is None or row[0] > limit:
                return None
            if row[0] + size > limit:  # the last line: say that the rest is dropped
                line, size = f"(log over {limit} bytes: later lines are dropped)", limit + 1 - row[0]
                level = "warning"
            seq = self._run(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {LOGS} WHERE job_id = ?", (job_id,)).fetchone()[0]
            self._run(f"INSERT INTO {LOGS} VALUES (?, ?, ?, ?, ?)", (job_id, seq, time.time(), level, line))
            self._run(f"UPDATE {JOBS} SET log_bytes = log_bytes + ? WHERE id = ?", (size, job_id))
        return int(seq)

    def logs(self, job_id: str, after: int = 0) -> list[LogLine]:
        rows = self._run(f"SELECT seq, at, level, line FROM {LOGS} WHERE job_id = ? AND seq > ? ORDER BY seq",
                         (job_id, after)).fetchall()
        return [LogLine(*r) for r in rows]

    def unfinished(self) -> list[Job]:
        mine, owner = self._mine
        rows = self._run(f"{SELECT} WHERE state IN ('queued', 'running'){mine} ORDER BY n", owner).fetchall()
        return [self._job(r) for r in rows]

    def purge(self, before: float) -> int:
        with self._atomic():
            self._run(f"DELETE FROM {LOGS} WHERE job_id IN (SELECT id FROM {JOBS} WHERE finished < ?)", (before,))
            count: int = self._run(f"DELETE FROM {JOBS} WHERE finished < ?", (before,)).rowcount
        return count

    @functools.cached_property
    def _job(self) -> Callable[[Sequence[Any]], Job]:
        """A row of :data:`.sql.SELECT` as a job, in this store's dialect."""
        return decode(self.dialect)


class SqliteStore(SqlStore):
    """Jobs in ``FOLDER/jobs.db`` (see the module docstring)."""

    dialect = SQLITE

    def __init__(self, folder: Path) -> None:
        self.where = str(folder / "jobs.db")
        self._lock = folder_lock(folder)
        try:
            private_files(folder / "jobs.db", folder / "jobs.db-wal", folder / "jobs.db-shm")
            self._db = sqlite3.connect(self.where, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a process crash
            # Checkpoints (which fsync) run in a thread of their own, not in a write on the event loop.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            with self._atomic():
                tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                self._open(tables)
        except StoreError:
            folder_unlock(self._lock)
            raise
        except sqlite3.Error as exc:
            folder_unlock(self._lock)
            raise StoreError(f"cannot open the job store {self.where}: {exc}") from None

        self._checkpoints = threading.Thread(target=self._checkpoint, name="jobs-checkpoint", daemon=True)
        self._closed = threading.Event()
        self._checkpoints.start()

    def __repr__(self) -> str:
        return f"<SqliteStore {self.where}>"

    def _run(self, query: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(query, args)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.where, isolation_level=None)) as db:
            yield db  # a WAL reader never holds the writer back

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            yield

    def _checkpoint(self, every: float = 1.0) -> None:
        """Move the write-ahead log into the database now and then (its own connection)."""
        try:
            db = sqlite3.connect(self.where, isolation_level=None)
        except sqlite3.Error:
            return
        with contextlib.closing(db):
            while not self._closed.wait(every):
                with contextlib.suppress(sqlite3.Error):
                    # Under a steady stream of writes a passive checkpoint never catches up
                    # with the writer, so the log is never started again and grows without
                    # end (a gigabyte for 40,000 jobs). So: copy what the log holds without
                    # holding writes back (PASSIVE), then hold them back only while the few
                    # pages written meanwhile are copied and the log is emptied (TRUNCATE).
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._closed.set()
        self._checkpoints.join(5)
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
        folder_unlock(self._lock)
