"""Shared secrets for services: read from a file (readable by its owner only) or an
environment variable, never from a command line or URL (``ps`` and logs would show it),
and the data folder the kernel keeps them in when it makes them itself."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError

DATA_ENV = "MICROKERNEL_DATA_DIR"


def data_dir() -> Path:
    """The kernel's data folder: ``$MICROKERNEL_DATA_DIR``, else
    ``$XDG_DATA_HOME/microkernel`` (``~/.local/share/microkernel``)."""
    given = os.environ.get(DATA_ENV)
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "microkernel"


def own_token(env: str, file: str | os.PathLike[str] | None, *, folder: Path, name: str,
              what: str = "token") -> tuple[bytes, str]:
    """A service's token and where it came from (a file path or an env name, never the
    token): ``file`` if given, else ``$env``, else the file ``name`` in ``folder``, made
    (chmod 600, in a folder of mode 700) on first use, where clients on this machine
    find it.

    :raises ConfigError: the token file cannot be read or made, is empty, or others may
        read it.
    """
    if file is None and os.environ.get(env, "").strip():
        return read_token(env, what=what), f"${env}"
    if file is not None:
        path = Path(file).expanduser()
    else:
        path = folder / name
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(32) + "\n")
        except OSError as exc:
            raise ConfigError(path, [("token file", f"cannot be made: {exc.strerror or exc}")]) from None
    return read_token(env, path, what=what), str(path)


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
