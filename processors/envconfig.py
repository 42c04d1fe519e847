"""Processor configuration from the environment: ``<PREFIX>CONFIG`` (a JSON object) plus one
``<PREFIX><FIELD>`` variable per field, parsed to the field default's type. Shared by every processor
so each one accepts the same spellings (booleans as 1/true/yes/on, lists comma-separated)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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


def json_config(env: Mapping[str, str], var: str) -> dict[str, Any]:
    """The JSON object in ``env[var]``, or {} when it is unset."""
    if not env.get(var):
        return {}
    loaded = json.loads(env[var])
    if not isinstance(loaded, dict):
        raise ValueError(f"{var} must be a JSON object")
    return loaded
