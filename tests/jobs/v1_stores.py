"""A job store as the previous release (schema version 1, microkernel-em 0.1.0) wrote it:
its statements, recorded from that release's ``store.py`` and ``pgstore.py``, to build a
store of that version and to replay what a kernel of that version does on opening one."""

from __future__ import annotations

# What a kernel of version 1 ran on opening a SQLite store (executescript).
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT UNIQUE,
    type TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    project TEXT,
    timeout REAL,
    retries INTEGER NOT NULL,
    name TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures TEXT NOT NULL DEFAULT '[]',
    worker TEXT,
    result TEXT,
    error TEXT,
    progress REAL,
    message TEXT,
    log_bytes INTEGER NOT NULL DEFAULT 0
);
-- Only the jobs not finished: an index of every job by state moved an entry across the
-- index at each change of state, and cost a third of each job's writes.
DROP INDEX IF EXISTS jobs_by_state;
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (n) WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""

# ... and a PostgreSQL one (in a transaction, under pg_advisory_xact_lock(7426001)).
POSTGRES_SCHEMA = """
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

# The first write of a version 1 kernel on PostgreSQL (JobStore.beat, on start).
POSTGRES_BEAT = ("INSERT INTO job_kernels (id, seen) VALUES (%s, extract(epoch from clock_timestamp())) "
                 "ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen")
# A job as version 1 added it (SQLite placeholders; PostgreSQL's are %s), then a log line.
INSERT_JOB = ("INSERT INTO jobs (id, key, type, task, state, priority, project, timeout, retries, name, created) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING")
INSERT_LOG_SQLITE = "INSERT INTO logs VALUES (?, ?, ?, ?, ?)"
INSERT_LOG_POSTGRES = "INSERT INTO job_logs VALUES (%s, %s, %s, %s, %s)"
