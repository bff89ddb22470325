"""Settings given to a kernel (``Kernel(settings=...)``, ``kernel run --set``) laid on
the manifests' ``custom``, and the errors they cause told as the caller's
(:class:`SettingsError`), not as the manifest's (:class:`ConfigError`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, SettingsError
from .manifest import ServiceSpec, format_validation_error


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, objects merged key by key (``--set a.b.c=1`` changes
    ``c`` and keeps ``a.b``'s other keys)."""
    out = dict(base)
    for key, value in over.items():
        inner = out.get(key)
        out[key] = merged(inner, value) if isinstance(inner, Mapping) and isinstance(value, Mapping) else value
    return out


def overridden(overrides: Mapping[str, Any], field: str) -> bool:
    """Whether the dotted ``field`` (or an object holding it) was given in ``overrides``;
    ``""`` (a check across fields) counts as given."""
    node: Any = overrides
    for part in field.split(".") if field else ():
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def settings_for(spec: ServiceSpec, model: type[BaseModel] | None, defaults: Mapping[str, Any],
                 overrides: Mapping[str, Any]) -> Any:
    """A service's settings: ``defaults``, its manifest's ``custom``, then ``overrides``,
    validated by ``model`` when it has one.

    :raises SettingsError: a field the overrides gave is at fault.
    :raises ConfigError: one of the manifest's is (naming its config.json).
    """
    custom = merged(merged(defaults, spec.manifest.custom), overrides)
    if model is None:
        return custom
    try:
        return model.model_validate(custom)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        given = [(field, msg) for field, msg in problems if overrides and overridden(overrides, field)]
        if given:  # name what the caller gave, not the manifest that did not say it
            raise SettingsError(spec.name, given) from None
        raise ConfigError(spec.path, format_validation_error(exc, "custom.")) from None


def blame_caller(service: str, overrides: Mapping[str, Any] | None, exc: Exception) -> Exception:
    """A service's :class:`ConfigError` about fields the caller's settings gave (a
    service checking its settings in ``start()``, a port given that is taken) as the
    caller's :class:`SettingsError`; any other error as it is."""
    if not overrides or not isinstance(exc, ConfigError):
        return exc
    inside = [("" if f == "custom" else f.removeprefix("custom."), m) for f, m in exc.problems
              if f == "custom" or f.startswith("custom.")]
    given = [(f, m) for f, m in inside if overridden(overrides, f)]
    if not given:
        return exc
    error = SettingsError(service, given)
    error.__cause__ = exc
    return error
