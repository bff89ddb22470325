"""Celery's side of benchmarks.jobs: Redis as broker and result backend, the no-op task."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=URL, backend=URL)
app.conf.update(worker_prefetch_multiplier=4, task_acks_late=False, result_expires=600,
                broker_connection_retry_on_startup=True)


@app.task
def inc(x: int) -> int:
    return x + 1
