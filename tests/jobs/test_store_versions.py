"""A job store written by the previous release is migrated when a kernel opens it; a
kernel of the previous release is then refused on the migrated store, naming both
versions; a store of a later release is refused, naming both versions."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from microkernel.services.jobs.model import JobState
from microkernel.services.jobs.sql import SCHEMA_VERSION
from microkernel.services.jobs.store import SqliteStore, StoreError

from . import v1_stores as v1

JOB = ("j-old-1", "nightly", "function", json.dumps({"function": "math:factorial", "args": [5]}), "queued", 5, "etl",
       None, 1, "old job", 1000.0)


def test_schema_version_is_2() -> None:
    assert SCHEMA_VERSION == 2


def test_a_sqlite_store_of_the_previous_release_is_migrated_and_refuses_its_kernels(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "jobs.db", isolation_level=None) as db:
        db.executescript(v1.SQLITE_SCHEMA)
        db.execute(v1.INSERT_JOB, JOB)
        db.execute(v1.INSERT_LOG_SQLITE, ("j-old-1", 1, 1001.0, "info", "a line of the old release"))
    db.close()
    store = SqliteStore(tmp_path)
    try:
        assert store.migrated_from == 1
        job = store.get("j-old-1")
        assert job is not None and job.state == JobState.QUEUED and job.key == "nightly" and job.project == "etl"
        assert job.task == {"function": "math:factorial", "args": [5]}
        assert [line.line for line in store.logs("j-old-1")] == ["a line of the old release"]
        assert [j.id for j in store.unfinished()] == ["j-old-1"]  # a restart takes it up again
        store.log("j-old-1", "info", "a line of this release", limit=10_000)
        assert len(store.logs("j-old-1")) == 2
    finally:
        store.close()
    # Opened again: already at this version, nothing moves.
    again = SqliteStore(tmp_path)
    try:
        assert again.migrated_from == SCHEMA_VERSION and again.get("j-old-1") is not None
    finally:
        again.close()
    # A kernel of the previous release opens it as it did, and its first write is refused.
    with sqlite3.connect(tmp_path / "jobs.db", isolation_level=None) as old:
        old.executescript(v1.SQLITE_SCHEMA)
        with pytest.raises(sqlite3.IntegrityError, match="job store at schema v2: this kernel speaks v1"):
            old.execute(v1.INSERT_JOB, ("j-new", None, *JOB[2:]))
    old.close()


def test_a_store_of_a_later_release_is_refused_naming_both_versions(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "jobs.db", isolation_level=None) as db:
        db.execute("UPDATE mk_schema SET version = 3")
    db.close()
    with pytest.raises(StoreError, match=r"jobs.db: the job store is at schema version 3, .* this kernel speaks version 2"):
        SqliteStore(tmp_path)


def test_a_postgresql_store_of_the_previous_release_is_migrated_and_refuses_its_kernels(
        pg_url: str, tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    from microkernel.services.jobs.pgstore import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(v1.POSTGRES_SCHEMA)
        db.execute(v1.INSERT_JOB.replace("?", "%s"), (*JOB[:3], psycopg.types.json.Jsonb(json.loads(JOB[3])),
                                                      *JOB[4:]))
        db.execute(v1.INSERT_LOG_POSTGRES, ("j-old-1", 1, 1001.0, "info", "a line of the old release"))
    store = PostgresStore(pg_url, tmp_path / "a")
    try:
        assert store.migrated_from == 1
        job = store.get("j-old-1")
        assert job is not None and job.key == "nightly" and job.task == {"function": "math:factorial", "args": [5]}
        assert [line.line for line in store.logs("j-old-1")] == ["a line of the old release"]
        assert [j.id for j in store.claim_queued(5)] == ["j-old-1"]
    finally:
        store.close()
    # A kernel of the previous release replays its opening: the schema goes through as
    # before, and its first write (it says it lives) is refused, naming both versions.
    with psycopg.connect(pg_url, autocommit=True) as old:
        with old.transaction():
            old.execute("SELECT pg_advisory_xact_lock(7426001)")
            old.execute(v1.POSTGRES_SCHEMA)
        with pytest.raises(psycopg.errors.CheckViolation, match="job store at schema v2: this kernel speaks v1"):
            old.execute(v1.POSTGRES_BEAT, ("old-kernel",))
    # This release still serves the migrated store.
    again = PostgresStore(pg_url, tmp_path / "b")
    try:
        assert again.migrated_from == SCHEMA_VERSION and again.get("j-old-1") is not None
    finally:
        again.close()
