"""Resource-aware placement: pure functions of what workers offer and a call asks.

A call may declare resources (``{"cpu": 1, "memory": 2e9, "gpu": 1}``); each executor
offers some (its :class:`~kernel.executor.ExecutorInfo` ``resources``). Placement keeps
the workers whose offer covers the request, then scores them: how tightly the call
fits (bin packing: big workers stay free for big calls), how loaded the worker is, and
how busy its CPU measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .policy import START, WAIT, Placement, WorkerView

Resources = Mapping[str, float]
FIT, LOAD, HEALTH = 0.4, 0.4, 0.2  # weights of the score's parts


def fits(offer: Resources, request: Resources) -> bool:
    """Whether ``offer`` covers every resource of ``request`` (a missing one is 0)."""
    return all(offer.get(name, 0.0) >= amount for name, amount in request.items())


def score(worker: WorkerView, offer: Resources, request: Resources) -> float:
    """0..1, higher is better, for a worker that fits."""
    shares = [min(1.0, amount / offer[name]) for name, amount in request.items() if offer.get(name)]
    fit = sum(shares) / len(shares) if shares else 1.0
    load = 1.0 - min(1.0, worker.running / max(1, worker.limit))
    health = 1.0 - min(100.0, worker.cpu_percent) / 100.0
    return round(FIT * fit + LOAD * load + HEALTH * health, 4)


class Scored(NamedTuple):
    placement: Placement
    scores: dict[str, float]  # worker id -> score, for every worker that fits and is free


def place_with(
    workers: Sequence[WorkerView], offers: Mapping[str, Resources], request: Resources, *,
    can_start: bool, new_offer: Resources | None,
) -> Scored:
    """The best free worker that fits ``request``; else start one (if a new worker
    would fit and there is room), else wait."""
    scores = {
        w.id: score(w, offers.get(w.id, {}), request)
        for w in workers
        if w.available and w.running < w.limit and fits(offers.get(w.id, {}), request)
    }
    if scores:
        best = max(sorted(scores), key=scores.__getitem__)
        return Scored(Placement("worker", best), scores)
    if can_start and (new_offer is None or fits(new_offer, request)):
        return Scored(START, scores)
    return Scored(WAIT, scores)


def unsatisfiable(offers: Sequence[Resources], new_offer: Resources | None, request: Resources) -> bool:
    """True when no worker there is, and none that could start, would ever fit."""
    if any(fits(offer, request) for offer in offers):
        return False
    return new_offer is not None and not fits(new_offer, request)
