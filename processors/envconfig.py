"""Processor configuration from the settings' raw values: ``<PREFIX>CONFIG`` (a JSON object) plus one
``<PREFIX><FIELD>`` variable per field, parsed to the field default's type. Shared by every processor
so each one accepts the same spellings (booleans as 1/true/yes/on, lists comma-separated).

``core.settings`` gathers the raw values (it cannot know these dataclasses, which live above it);
the functions here turn them into a processor's dataclass and reject names no dataclass declares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import structlog

from core.settings import ProcessorValues, Settings, get_settings

log = structlog.get_logger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(var: str, raw: str, default: Any, *, is_list: bool = False) -> Any:
    """``raw`` (the value of environment variable ``var``) as the type of ``default``."""
    if is_list:
        return [p.strip() for p in raw.split(",") if p.strip()]
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{var} must be a boolean, got {raw!r}")
    if isinstance(default, str):
        return raw
    try:
        return int(raw) if isinstance(default, int) else float(raw)
    except ValueError:
        raise ValueError(f"{var} must be a number, got {raw!r}") from None


def settings_of(environ: Mapping[str, str] | None) -> Settings:
    """The process's settings, or (for tests and child environments) those of ``environ``."""
    return get_settings() if environ is None else Settings.from_env(environ)


def field_defaults(cls: type) -> dict[str, Any]:
    """Init fields of dataclass ``cls`` -> default (the type the raw strings are parsed to)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


def check_names(
    raw: ProcessorValues, prefix: str, what: str, *classes: type, retired: Mapping[str, str] | None = None
) -> None:
    """``ValueError`` for a ``<prefix><NAME>`` variable none of ``classes`` declares (a typo keeps no
    default). A ``retired`` name (a setting that existed once, with why it went) is only warned about:
    an operator's old environment must not stop a worker that no longer needs it."""
    names = {name for cls in classes for name in field_defaults(cls)}
    for name in sorted(raw.values):
        if name in (retired or {}):
            log.warning("setting_retired", setting=f"{prefix}{name.upper()}", why=(retired or {})[name])
        elif name not in names:
            raise ValueError(f"unknown {what} setting {prefix}{name.upper()}")


def field_values(
    raw: ProcessorValues, cls: type, prefix: str, *, list_fields: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The per-field values of ``raw`` that belong to dataclass ``cls``, parsed to their types."""
    defaults = field_defaults(cls)
    return {
        name: parse_value(f"{prefix}{name.upper()}", text, defaults[name], is_list=name in list_fields)
        for name, text in raw.values.items()
        if name in defaults
    }
