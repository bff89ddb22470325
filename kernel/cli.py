"""The ``kernel`` command, on Click: ``kernel run`` and ``kernel completion`` here, and
the verbs plugins add through the ``kernel_cli_commands`` hook (the execution
manager's ``status`` and ``node``, the job service's ``submit``..., the examples'
``demo``).

Nothing heavy is imported before a verb runs: ``kernel --help`` loads Click, pluggy and
the plugins' command modules only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .commands import CommandFailed, examples, log_options, loop_option, run_loop
from .errors import KernelError, PluginError, UsageError

OWN_COMMANDS = ("run", "completion")
DIST = "microkernel-em"


def plugin_commands(plugins: Sequence[object] = ()) -> dict[str, click.Command]:
    """Every installed plugin's verbs (and those of ``plugins``); one named like
    another's, or like the kernel's own, is a :class:`PluginError`."""
    from .plugins import make_plugin_manager, merged_registry

    commands: dict[str, click.Command] = merged_registry(make_plugin_manager(plugins), "kernel_cli_commands",
                                                         "command")
    taken = sorted(set(commands) & set(OWN_COMMANDS))
    if taken:
        raise PluginError(f"plugins may not replace the kernel's own command(s) {taken}")
    for name, command in commands.items():
        if not isinstance(command, click.Command):
            raise PluginError(f"command {name!r} is a {type(command).__name__}, not a click.Command")
    return commands


class KernelGroup(click.Group):
    """The ``kernel`` group: its own verbs, then the plugins' (loaded on first need)."""

    _loaded: dict[str, click.Command] | None = None

    def _plugin_commands(self) -> Mapping[str, click.Command]:
        if self._loaded is None:
            self._loaded = plugin_commands()
        return self._loaded

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *sorted(self._plugin_commands())]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands().get(cmd_name)


@click.group(cls=KernelGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=examples("kernel run services/", "kernel status", "kernel submit --function math:factorial "
                             "--arg 20 --wait", "kernel node --connect ws://HOST:8765",
                             "kernel completion bash >> ~/.bashrc"))
@click.option("--log-level", metavar="LEVEL", help="debug, info, warning or error (else $KERNEL_LOG_LEVEL, else info)")
@click.option("--log-json/--log-console", "log_json", default=None,
              help="JSON log lines, or a console renderer (default: console on a terminal)")
@click.version_option(package_name=DIST, message="%(prog)s %(version)s", prog_name="kernel")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_json: bool | None) -> None:
    """Run a kernel and its services, reach a running one, or serve its calls from
    another machine. The verbs after `run` come from the installed plugins."""
    from . import logs

    ctx.meta["kernel.env_log_level"] = os.environ.get(logs.LEVEL_ENV)
    if log_level is not None:
        logs.resolve_level(log_level)  # a bad name is a usage error before anything runs
    log_options(ctx)


@cli.command(epilog=examples(
    "kernel run services/", "kernel run . --set execution-manager.maxWorkers=4",
    "kernel run services/ --set execution-manager.nodes.port=8766 --set jobs.api.port=8800",
    "kernel run services/ --no-http   # no dashboard, API or job API"))
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--set", "pairs", multiple=True, metavar="SERVICE.FIELD[.FIELD]=VALUE",
              help="override a service's custom setting; VALUE is JSON (4, true, \"x\", {...}), "
                   "else taken as a string (repeatable)")
@click.option("--no-http", is_flag=True, help="no dashboard, JSON API, /metrics or job API")
@click.option("--no-jobs", is_flag=True, help="no job API (kernel submit reaches it)")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="how long running work gets to finish at Ctrl-C or SIGTERM, all services together")
@loop_option
def run(paths: tuple[Path, ...], pairs: tuple[str, ...], no_http: bool, no_jobs: bool, stop_timeout: float,
        loop: str) -> None:
    """Run the services found in PATHS until Ctrl-C or SIGTERM.

    Each PATH is a service folder (it holds config.json) or a folder searched for them.
    The folder you start in is put on the import path, as Celery and uvicorn do, for the
    kernel and its workers: services import your own modules, and `kernel submit
    --function mytasks:work` finds mytasks.py.
    """
    from .running import add_app_folder, serve_from_cli

    settings = settings_from(pairs)
    add_app_folder(Path.cwd())
    run_loop(serve_from_cli(paths, settings, pairs, no_http=no_http, no_jobs=no_jobs, stop_timeout=stop_timeout),
             loop)


@cli.command(epilog=examples("kernel completion bash >> ~/.bashrc", "kernel completion zsh >> ~/.zshrc",
                             "kernel completion fish > ~/.config/fish/completions/kernel.fish"))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the script that completes `kernel` verbs and options in SHELL."""
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the choice is among Click's own shells
    click.echo(complete(cli, {}, "kernel", "_KERNEL_COMPLETE").source())


def settings_from(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set`` pairs as the kernel's ``settings``: ``execution-manager.nodes.port=8766``
    -> ``{"execution-manager": {"nodes": {"port": 8766}}}``. VALUE is read as JSON, and
    as a plain string where it is not JSON (``--set jobs.store=postgresql://...``).

    :raises click.BadParameter: a pair without ``SERVICE.FIELD=``, naming it.
    """
    import json

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        service, _, path = key.partition(".")
        fields = path.split(".") if path else []
        if not sep or not service or not fields or not all(fields):
            raise click.BadParameter(f"{pair!r}: expected SERVICE.FIELD=VALUE, e.g. execution-manager.maxWorkers=4",
                                     param_hint="--set")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = out.setdefault(service, {})
        for field in fields[:-1]:
            target = target.setdefault(field, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{pair!r}: {field} was given a value, not fields", param_hint="--set")
        target[fields[-1]] = value
    return out


def _report(message: str, code: int) -> int:
    click.echo(message, err=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kernel`` console script: runs one verb, turns every error into one line."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="kernel", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "kernel"
        hint = f" (see {where} --help)" if exc.ctx is not None else ""
        return _report(f"{where}: error: {exc.format_message()}{hint}", 2)
    except CommandFailed as exc:
        return _report(f"{exc.command_path}: error: {exc.format_message()}", exc.exit_code)
    except click.ClickException as exc:
        return _report(f"kernel: error: {exc.format_message()}", exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        return 130
    except KernelError as exc:
        return _report(f"kernel: error: {exc}", 2 if _is_bad_input(exc) else 1)
    except ValueError as exc:
        return _report(f"kernel: error: {exc}", 2)


def _is_bad_input(exc: KernelError) -> bool:
    """What the user asked for is wrong (a setting, a port already in use), as with a bad
    flag: exit code 2. A broken service or manifest is 1."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, UsageError) or (isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE):
            return True
        cause = cause.__cause__
    return False


if __name__ == "__main__":
    raise SystemExit(main())
