"""Shared secrets for services: read from a file (readable by its owner only) or an
environment variable, never from a command line or URL (``ps`` and logs would show it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError


def read_token(env: str, file: str | os.PathLike[str] | None = None, *, what: str = "token") -> bytes:
    """The token from ``file`` if given, else from the environment variable ``env``;
    ``what`` names it in errors ("node token", "API token"...).

    :raises ConfigError: neither holds a token, or the file is unreadable, empty or
        readable by others.
    """
    if file is not None:
        path = Path(file)
        try:
            mode = path.stat().st_mode
            token = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(path, [("token file", f"cannot be read: {exc.strerror or exc}")]) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(path, [("token file", "is readable by others; chmod 600 it")])
        if not token:
            raise ConfigError(path, [("token file", "is empty")])
        return token
    value = os.environ.get(env, "").strip()
    if not value:
        raise ConfigError(f"${env}", [("token", f"no {what}: set ${env} or give a token file")])
    return value.encode()
