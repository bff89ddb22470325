"""The kernel command's frame: plugins add verbs as Click commands, and may not take
another's; every verb has help with examples; errors are one line."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import click
import pytest

from kernel import hookimpl
from kernel.cli import cli, plugin_commands, settings_from
from kernel.errors import PluginError


def plugin(*names: str) -> object:
    @hookimpl
    def kernel_cli_commands() -> Mapping[str, click.Command]:
        return {name: click.Command(name, help=f"the {name} command") for name in names}

    return SimpleNamespace(kernel_cli_commands=kernel_cli_commands)


def test_installed_plugins_bring_their_commands() -> None:
    assert {"status", "node", "demo", "submit", "jobs", "job", "logs", "cancel"} <= set(plugin_commands())


def test_a_plugin_adds_a_command() -> None:
    commands = plugin_commands([plugin("greet")])
    assert commands["greet"].help == "the greet command"


@pytest.mark.parametrize(("names", "match"), [
    (("run",), r"plugins may not replace the kernel's own command\(s\) \['run'\]"),
    (("completion",), r"plugins may not replace the kernel's own command\(s\) \['completion'\]"),
    (("status",), "command 'status' is provided by both"),
])
def test_a_command_taken_already_is_a_plugin_error(names: tuple[str, ...], match: str) -> None:
    with pytest.raises(PluginError, match=match):
        plugin_commands([plugin(*names)])


def test_a_command_that_is_not_a_click_command_is_a_plugin_error() -> None:
    @hookimpl
    def kernel_cli_commands() -> Mapping[str, object]:
        return {"old": object()}

    with pytest.raises(PluginError, match=r"command 'old' is a object, not a click\.Command"):
        plugin_commands([SimpleNamespace(kernel_cli_commands=kernel_cli_commands)])


def test_every_verb_has_help_with_examples() -> None:
    ctx = click.Context(cli, info_name="kernel")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        text = command.get_help(click.Context(command, info_name=name, parent=ctx))
        assert "Examples:" in text and f"kernel {name}" in text.split("Examples:")[1], name
        assert command.help, name


@pytest.mark.parametrize(("pairs", "expected"), [
    (["execution-manager.maxWorkers=4"], {"execution-manager": {"maxWorkers": 4}}),
    (["execution-manager.nodes.port=8766", "execution-manager.nodes.host=0.0.0.0"],
     {"execution-manager": {"nodes": {"port": 8766, "host": "0.0.0.0"}}}),
    (['jobs.api={"port": 0}', "jobs.api.token=abc"], {"jobs": {"api": {"port": 0, "token": "abc"}}}),
    (["jobs.store=postgresql://u@h/db"], {"jobs": {"store": "postgresql://u@h/db"}}),
    (["execution-manager.http=null"], {"execution-manager": {"http": None}}),
])
def test_set_reads_nested_keys_and_json_values(pairs: list[str], expected: dict[str, object]) -> None:
    assert settings_from(pairs) == expected


@pytest.mark.parametrize("pair", ["nodot=1", "x.=1", "x.a..b=1", ".a=1", "x.a"])
def test_set_without_service_and_field_names_the_pair(pair: str) -> None:
    with pytest.raises(click.BadParameter, match=f"{pair!r}: expected SERVICE.FIELD=VALUE"):
        settings_from([pair])
