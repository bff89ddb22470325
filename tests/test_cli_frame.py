"""The kernel command's frame: plugins add subcommands, and may not take another's."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import pytest

from kernel import hookimpl
from kernel.cli import plugin_commands
from kernel.commands import Command
from kernel.errors import PluginError


def plugin(*names: str) -> object:
    @hookimpl
    def kernel_cli_commands() -> Mapping[str, Command]:
        return {name: Command(help=f"the {name} command", run=lambda _args: 0) for name in names}

    return SimpleNamespace(kernel_cli_commands=kernel_cli_commands)


def test_installed_plugins_bring_their_commands() -> None:
    assert {"status", "node", "demo"} <= set(plugin_commands())


def test_a_plugin_adds_a_command() -> None:
    commands = plugin_commands([plugin("greet")])
    assert commands["greet"].help == "the greet command"


@pytest.mark.parametrize(("names", "match"), [
    (("run",), r"plugins may not replace the kernel's own command\(s\) \['run'\]"),
    (("status",), "command 'status' is provided by both"),
])
def test_a_command_taken_already_is_a_plugin_error(names: tuple[str, ...], match: str) -> None:
    with pytest.raises(PluginError, match=match):
        plugin_commands([plugin(*names)])
