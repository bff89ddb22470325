"""Resource-aware placement: pure functions of what workers offer and a call asks.

A call may declare resources (``{"cpu": 1, "memory": 2e9, "gpu": 1}``); each executor
offers some (its :class:`~microkernel.services.execution_manager.executors.WorkerInfo`
``resources``). The scheduler keeps the workers whose offer covers the request and,
among those as free as each other, takes the one the call fits most tightly (bin
packing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Resources = Mapping[str, float]


def fits(offer: Resources, request: Resources) -> bool:
    """Whether ``offer`` covers every resource of ``request`` (a missing one is 0)."""
    return all(offer.get(name, 0.0) >= amount for name, amount in request.items())


def tightness(offer: Resources, request: Resources) -> float:
    """0..1: how much of ``offer`` the request takes (higher: a tighter fit, so big
    workers stay free for big calls)."""
    shares = [min(1.0, amount / offer[name]) for name, amount in request.items() if offer.get(name)]
    return sum(shares) / len(shares) if shares else 1.0


def unsatisfiable(offers: Sequence[Resources], new_offer: Resources | None, request: Resources) -> bool:
    """True when no worker there is, and none that could start, would ever fit."""
    if any(fits(offer, request) for offer in offers):
        return False
    return new_offer is not None and not fits(new_offer, request)
