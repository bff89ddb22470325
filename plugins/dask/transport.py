"""The ``dask`` node transport: ``custom.nodes = {"transport": "dask", ...}``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kernel.errors import ConfigError
from microkernel.services.execution_manager.executors import NodeListener, NodeTransport

from .settings import DaskSettings


class DaskTransport(NodeTransport):
    """Dask's own workers are the nodes: there is no ``kernel node`` agent to run."""

    schemes = ()

    def listener(self, settings: Mapping[str, Any], source: str | os.PathLike[str] = "custom.nodes") -> NodeListener:
        from .versions import check_version

        check_version()  # before anything imports distributed: a missing one says what to install
        from .listener import DaskCluster

        try:
            parsed = DaskSettings.model_validate(dict(settings))
        except ValidationError as exc:
            problems = [(".".join(["custom", "nodes", *map(str, e["loc"])]) if e["loc"] else "custom.nodes",
                         e["msg"]) for e in exc.errors()]
            raise ConfigError(os.fspath(source), problems) from None
        return DaskCluster(parsed)
