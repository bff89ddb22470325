"""Service manifests (``config.json``): the model, reading, and readable errors."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ManifestError

MANIFEST_FILE = "config.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Manifest(BaseModel):
    """The validated content of one ``config.json``. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    name: str | None = Field(default=None, description="defaults to the folder name")
    entry: str | None = Field(
        default=None,
        description="'module:Class' inside the folder; defaults to the single "
        "BaseService subclass of service.py (or __init__.py)",
    )
    description: str = ""
    version: str | None = None
    global_: bool = Field(default=False, alias="global")
    kernel_mode: bool = Field(default=False, alias="kernelMode")
    fail_on_error: bool = Field(default=True, alias="failOnError")
    dependencies: list[str] = Field(default_factory=list)
    in_process: bool = Field(
        default=False, alias="inProcess",
        description="its @distributed calls may run in the kernel's own process while idle "
        "(only where the execution manager's inProcess is on too)",
    )
    priority: int | None = Field(
        default=None, ge=0, le=10, description="default priority (0-10) of its @distributed calls"
    )
    custom: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed(data, {"runLocally": "inProcess"})

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(
                "a service name is letters, digits, '.', '_' or '-', starting with a letter "
                "or digit"
            )
        return v

    @field_validator("entry")
    @classmethod
    def _check_entry(cls, v: str | None) -> str | None:
        if v is not None and not _ENTRY_RE.match(v):
            raise ValueError("expected 'module:ClassName', for example 'service:MyService'")
        return v

    @field_validator("dependencies")
    @classmethod
    def _check_dependencies(cls, v: list[str]) -> list[str]:
        dupes = sorted({d for d in v if v.count(d) > 1})
        if dupes:
            raise ValueError(f"listed more than once: {', '.join(dupes)}")
        return v


@dataclass(frozen=True)
class ServiceSpec:
    """A discovered service: its manifest, folder and resolved name."""

    name: str
    folder: Path
    manifest: Manifest
    builtin: bool = False

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_FILE


def refuse_renamed(data: Any, renamed: Mapping[str, str]) -> Any:
    """``data`` unchanged, unless it holds a key that was renamed: then a ValueError naming
    the new one (for a model's ``mode="before"`` validator)."""
    if isinstance(data, Mapping):
        for old, new in renamed.items():
            if old in data:
                raise ValueError(f"{old!r} was renamed {new!r} (version 0.2)")
    return data


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Turn pydantic's errors into ``(field, message)`` pairs a person can act on."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] != "missing" and err["loc"]:  # (not a whole object's)
                msg = f"{msg} (got {err['input']!r})"
        problems.append((field, msg))
    return problems


def _allowed_fields() -> str:
    names = [f.alias or n for n, f in Manifest.model_fields.items()]
    return ", ".join(names)


def parse_manifest(path: Path, data: Any) -> Manifest:
    """Validate already-decoded JSON ``data`` read from ``path``."""
    if not isinstance(data, Mapping):
        raise ManifestError(path, [("", f"expected a JSON object, got {type(data).__name__}")])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        if any(msg == "unknown field" for _, msg in problems):
            problems.append(("", f"allowed fields: {_allowed_fields()}"))
        raise ManifestError(path, problems) from None


def read_manifest(folder: Path, *, builtin: bool = False) -> ServiceSpec:
    """Read and validate ``folder/config.json``; raise :class:`ManifestError` naming it."""
    path = folder / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(path, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ManifestError(path, [("", f"invalid JSON at {where}: {exc.msg}")]) from None
    manifest = parse_manifest(path, data)
    return ServiceSpec(manifest.name or folder.name, folder, manifest, builtin)
