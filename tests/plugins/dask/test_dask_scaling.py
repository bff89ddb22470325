"""The Dask cluster's scaling policy, as a table (no processes)."""

from __future__ import annotations

import pytest

from microkernel.plugins.dask.scaling import WorkerView as W, plan


@pytest.mark.parametrize(("workers", "waiting", "starting", "target", "retire"), [
    ([W("0", 1, 1, None)], 5, 0, 2, ()),                    # busy and calls wait: grow
    ([W("0", 1, 1, None), W("1", 1, 1, None)], 5, 0, 3, ()),
    ([W("0", 1, 1, None), W("1", 1, 1, None), W("2", 1, 1, None)], 5, 0, 3, ()),  # at the maximum
    ([W("0", 0, 2, 0.0)], 3, 0, 1, ()),                     # calls wait but it is idle: they are on their way
    ([W("0", 1, 1, None)], 5, 1, 2, ()),                    # one already starting counts
    ([W("0", 0, 1, 0.0), W("1", 0, 1, 5.0)], 0, 0, 1, ("0",)),  # the longest idle goes
    ([W("0", 0, 1, 8.0), W("1", 0, 1, 9.0)], 0, 0, 2, ()),  # not idle long enough
    ([W("0", 0, 1, 0.0)], 0, 0, 1, ()),                     # never below the minimum
    ([], 0, 0, 1, ()),                                      # below it: back up
])
def test_plan(workers, waiting, starting, target, retire) -> None:
    decision = plan(workers, waiting, starting, low=1, high=3, now=10.0, idle_timeout=5.0)
    assert (decision.target, decision.retire) == (target, retire)
    assert bool(decision.reason) == (target != len(workers) + starting or bool(retire))
