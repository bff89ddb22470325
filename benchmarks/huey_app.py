"""huey's side of benchmarks.jobs: a SQLite-backed huey and the no-op task."""

from __future__ import annotations

import os

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))


@huey.task()
def inc(x: int) -> int:
    return x + 1
