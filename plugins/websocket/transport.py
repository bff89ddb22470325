"""The websocket node transport: ``ws://`` and ``wss://``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kernel.errors import ConfigError
from kernel.plugins import make_plugin_manager, registered
from microkernel.services.execution_manager.executors import NodeConfig, NodeListener, NodeTransport, read_token
from microkernel.services.execution_manager.hookspecs import executor_types

from .settings import HubSettings


class WebsocketTransport(NodeTransport):
    schemes = ("ws", "wss")

    def listener(self, settings: Mapping[str, Any], source: str | os.PathLike[str] = "custom.nodes") -> NodeListener:
        from .listener import NodeHub

        try:
            hub_settings = HubSettings.model_validate(dict(settings))
        except ValidationError as exc:
            problems = [(".".join(["custom", "nodes", *map(str, e["loc"])]), e["msg"]) for e in exc.errors()]
            raise ConfigError(os.fspath(source), problems) from None
        token = read_token(hub_settings.token_env, hub_settings.token_file)
        return NodeHub(hub_settings, token)

    async def run_node(self, config: NodeConfig) -> int:
        from .agent import NodeAgent

        factory = registered(executor_types(make_plugin_manager()), config.node_type, "--node-type", "node type")
        return await NodeAgent(config, factory).run()
