"""``kernel run`` once its flags are read: the app's folder on the import path, the
kernel started with the command line's settings, served until Ctrl-C or SIGTERM."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from .blame import OURS
from .errors import SettingsError, ShadowingError


def add_app_folder(folder: Path) -> None:
    """Put ``folder`` (where ``kernel run`` or ``kernel node`` was started) first on the
    import path, as Celery and uvicorn do: the app's services import its own modules, and
    workers (which are handed the kernel's path) import them too.

    :raises ShadowingError: a module of the folder's would replace one of our packages
        (``kernel.py``, a ``microkernel/`` package) in the kernel or its workers.
    """
    folder = folder.resolve()
    for package in OURS:
        spec = importlib.util.find_spec(package)
        ours = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        # (a plain folder of that name, without __init__.py, shadows nothing: a regular
        # package found later on the path wins over a namespace portion)
        for candidate in (folder / f"{package}.py", folder / package / "__init__.py"):
            if candidate.exists() and (ours is None or candidate.resolve() != ours):
                # (a repository's own checkout holds the real ``kernel`` package: that one is fine)
                raise ShadowingError(candidate, package)
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def describe_settings_error(exc: SettingsError, pairs: Sequence[str]) -> str:
    """``exc`` in the command line's terms: each problem names the ``--set`` that caused it."""
    keys = [(pair.partition("=")[0], pair) for pair in pairs]
    parts = []
    for field, message in exc.problems:
        if not field and not exc.unknown:  # a check across fields: the message names them
            parts.append(f"{exc.service}: {message}")
            continue
        key = f"{exc.service}.{field}" if field else exc.service
        given = [pair for k, pair in keys if k == key or k.startswith(key + ".") or key.startswith(k + ".")]
        flag = " ".join(f"--set {p}" for p in given) or f"--set {key}=..."
        parts.append(f"{flag}: {message}")
    return "; ".join(parts)


async def serve_from_cli(paths: Sequence[Path], settings: Mapping[str, Mapping[str, Any]], pairs: Sequence[str],
                         *, no_http: bool, no_jobs: bool, stop_timeout: float) -> None:
    """Run a kernel on ``paths`` until a signal; what it serves is printed when it is up."""
    from .kernel import Kernel

    defaults: dict[str, dict[str, Any]] = {}
    if not no_http:
        defaults["execution-manager"] = {"http": {}}
    if not (no_http or no_jobs):
        defaults["jobs"] = {"api": {}}
    kernel = Kernel(paths, settings=settings, defaults=defaults, stop_timeout=stop_timeout)

    async def ready(k: Kernel) -> None:
        states = ", ".join(f"{n} ({s.value})" for n, s in k.service_states().items())
        click.echo(f"kernel running: {states}. Ctrl-C or SIGTERM stops it.", err=True)
        for lines in k.hook.kernel_cli_serving(kernel=k):
            for line in lines or ():
                click.echo(line, err=True)

    try:
        await kernel.serve(ready)
    except SettingsError as exc:
        raise click.BadParameter(describe_settings_error(exc, pairs), param_hint="--set") from None
