"""The job service's hook: the task types plugins provide.

Implement it with ``kernel.hookimpl`` in a module of the ``microkernel.plugins``
entry-point group, as the built-in types do (:mod:`.plugin`). :func:`task_types` adds
the spec to the kernel's plugin manager on first use and merges every plugin's answer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pluggy

from kernel.hookspecs import PROJECT
from kernel.plugins import add_hookspecs, merged_registry

if TYPE_CHECKING:
    from .tasks import TaskType

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def jobs_task_types() -> Mapping[str, TaskType]:  # type: ignore[empty-body]  # a spec has no body
    """Task types this plugin provides, as ``{name: task_type}`` (a
    :class:`~microkernel.services.jobs.tasks.TaskType`; the name is what a job's
    ``"type"`` says).

    Every implementation is called; the results are merged into one registry (a name
    given twice is a :class:`~kernel.errors.PluginError`).
    """


def task_types(pm: pluggy.PluginManager) -> dict[str, TaskType]:
    """Every plugin's task types, merged; a duplicate name is a PluginError."""
    add_hookspecs(pm, sys.modules[__name__])
    return merged_registry(pm, "jobs_task_types", "task type")
