"""Every decision about a call, sans I/O: stimuli in, instructions out.

:class:`Scheduler` owns the queue, the records of calls and workers, placement,
retries, timeouts and project limits; :mod:`.policy` holds the pure functions the
pool asks about scaling. Standard library only: no event loop, no clock of its own,
no processes (``tests/test_architecture.py`` keeps it so). Tested by feeding
stimuli and reading the instructions (``tests/execution_manager/scheduling/``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from . import stimuli as stimuli
    from .policy import (
        Limits as Limits,
        Liveness as Liveness,
        Sample as Sample,
        ScalePlan as ScalePlan,
        ScalingDecision as ScalingDecision,
        Verdict as Verdict,
        busy_start as busy_start,
        chunk_size as chunk_size,
        judge_liveness as judge_liveness,
        memory_verdicts as memory_verdicts,
        pin_plan as pin_plan,
        pin_target as pin_target,
        plan_bounds as plan_bounds,
        plan_scaling as plan_scaling,
        wants_worker as wants_worker,
    )
    from .resources import fits as fits, tightness as tightness, unsatisfiable as unsatisfiable
    from .scheduler import Scheduler as Scheduler
    from .stimuli import (
        CallSpec as CallSpec,
        Instruction as Instruction,
        StartWorker as StartWorker,
        Stimulus as Stimulus,
        StopWorker as StopWorker,
    )

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
