"""The seam executor plugins implement: all a plugin imports, documented where defined.

- :class:`Worker`, :class:`WorkerInfo`, :class:`WorkerState`, :class:`CallHost`,
  ``WorkerFactory`` (:mod:`.interface`): the interface and what the pool hands it;
- :class:`WorkerBase` (:mod:`.base`): the bookkeeping helpers the built-ins share;
- :class:`Attempt`, :class:`ReplyFuture` (:mod:`.attempt`): one try at running a call;
- :class:`Runtime`, :class:`CallChannel`, :class:`ErrorInfo` (:mod:`.runtime`): how the
  executing side runs a decoded call (worker processes import this, and no asyncio);
- :class:`NodeTransport`, :class:`NodeListener`, :class:`NodeHost` (:mod:`.nodes`):
  the node seam;
- :class:`FrameStream`, :class:`TurnBatcher` (:mod:`.streams`), :class:`Background`
  (:mod:`.background`): asyncio helpers for transports; :class:`ProcessSampler`
  (:mod:`.sampling`): psutil readings of the machine and worker processes;
- :func:`judge_liveness` and its :class:`Verdict` (from :mod:`..scheduling.policy`): the
  decision a worker of the kernel's machine carries out in ``check_alive``.

The wire a transport speaks is :mod:`..wire`; the errors a worker raises are in
:mod:`..errors`; the conformance kit a plugin's tests run is :mod:`.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.lazy import lazy_face

if TYPE_CHECKING:
    from ..scheduling.policy import Verdict as Verdict, judge_liveness as judge_liveness
    from .attempt import Attempt as Attempt, CallWatch as CallWatch, ReplyFuture as ReplyFuture
    from .background import Background as Background
    from .base import WorkerBase as WorkerBase
    from .interface import (
        CallHost as CallHost,
        Worker as Worker,
        WorkerFactory as WorkerFactory,
        WorkerInfo as WorkerInfo,
    )
    from .nodes import (
        TOKEN_ENV as TOKEN_ENV,
        NodeConfig as NodeConfig,
        NodeHost as NodeHost,
        NodeInfo as NodeInfo,
        NodeListener as NodeListener,
        NodeTransport as NodeTransport,
        package_version as package_version,
        read_token as read_token,
    )
    from .runtime import CallChannel as CallChannel, ErrorInfo as ErrorInfo, Reply as Reply, Runtime as Runtime
    from .sampling import ProcessSampler as ProcessSampler, Reading as Reading
    from .states import CLOSED as CLOSED, WorkerState as WorkerState
    from .streams import FrameStream as FrameStream, TurnBatcher as TurnBatcher

if not TYPE_CHECKING:  # type checkers see the re-exports above, and only those
    __getattr__, __dir__ = lazy_face(__name__, __file__)
