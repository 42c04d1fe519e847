"""The schema registry: every topic's Avro schema, parsed once, plus every historical version.

``schemas/<topic>.avsc`` is the current (reader) schema of a topic. Older versions live in
``schemas/history/<topic>/v<N>.avsc``; the current file is version ``N + 1`` of the newest history
file. All versions are indexed by their CRC-64-AVRO fingerprint so a reader can find the writer
schema of any single-object-encoded message that was ever produced.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

__all__ = [
    "SCHEMA_DIR",
    "REGISTRY",
    "TOPICS",
    "TOPIC_SCHEMAS",
    "SchemaVersion",
    "by_fingerprint",
    "fingerprint_of",
    "history",
    "raw_schema_for",
    "schema_for",
    "version_for",
]

SCHEMA_DIR = Path(__file__).resolve().parent
_VERSION_RE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One version of one topic's schema, with everything a reader or writer needs."""

    topic: str
    version: int
    raw: dict[str, Any]  # the JSON as written in the file (docs included), for registries and docs
    parsed: dict[str, Any]  # fastavro.parse_schema output, ready for schemaless_reader/writer
    canonical: str  # Avro Parsing Canonical Form
    fingerprint: int  # CRC-64-AVRO of ``canonical``, as the little-endian integer on the wire
    path: Path

    @property
    def fingerprint_bytes(self) -> bytes:
        """The 8 bytes that follow ``C3 01`` in single-object encoding."""
        return self.fingerprint.to_bytes(8, "little")


def fingerprint_of(schema: dict[str, Any] | str) -> int:
    """CRC-64-AVRO fingerprint of a raw schema's canonical form, as the wire's little-endian integer."""
    hex_le = _fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    return int.from_bytes(bytes.fromhex(hex_le), "little")


def _load(topic: str, version: int, path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text(encoding="utf-8"))
    # A fresh named_schemas per file: the same enum (e.g. carnival.fleet.Hardware) is defined in many files.
    parsed: dict[str, Any] = parse_schema(raw, named_schemas={})  # type: ignore[assignment]
    canonical = to_parsing_canonical_form(raw)
    return SchemaVersion(topic, version, raw, parsed, canonical, fingerprint_of(raw), path)


def _load_all() -> tuple[dict[str, list[SchemaVersion]], dict[int, SchemaVersion]]:
    histories: dict[str, list[SchemaVersion]] = {}
    for current in sorted(SCHEMA_DIR.glob("*.avsc")):
        topic = current.name.removesuffix(".avsc")
        old: list[tuple[int, Path]] = []
        hist_dir = SCHEMA_DIR / "history" / topic
        if hist_dir.is_dir():
            for p in hist_dir.glob("*.avsc"):
                m = _VERSION_RE.match(p.name)
                if not m:
                    raise ValueError(f"history file {p} is not named v<N>.avsc")
                old.append((int(m.group(1)), p))
        old.sort()
        versions = [_load(topic, n, p) for n, p in old]
        versions.append(_load(topic, (old[-1][0] if old else 0) + 1, current))
        histories[topic] = versions
    registry: dict[int, SchemaVersion] = {}
    for versions in histories.values():
        for sv in versions:
            clash = registry.get(sv.fingerprint)
            # Identical schemas in two topics are fine (same data shape); identical fingerprints are not
            # a problem then. Only a real CRC collision between different forms is.
            if clash is not None and clash.canonical != sv.canonical:
                raise ValueError(f"fingerprint collision: {clash.path} and {sv.path}")
            registry.setdefault(sv.fingerprint, sv)
    return histories, registry


_HISTORIES, REGISTRY = _load_all()
TOPICS: tuple[str, ...] = tuple(sorted(_HISTORIES))
TOPIC_SCHEMAS: dict[str, dict[str, Any]] = {t: v[-1].parsed for t, v in _HISTORIES.items()}


def version_for(topic: str) -> SchemaVersion:
    """The current schema version of ``topic``; KeyError names the known topics."""
    try:
        return _HISTORIES[topic][-1]
    except KeyError:
        raise KeyError(f"no schema for topic {topic!r}; known topics: {', '.join(TOPICS)}") from None


def schema_for(topic: str) -> dict[str, Any]:
    """The parsed current (reader) schema of ``topic``."""
    return version_for(topic).parsed


def raw_schema_for(topic: str) -> dict[str, Any]:
    """The current schema of ``topic`` as written in its ``.avsc`` (docs included)."""
    return version_for(topic).raw


def history(topic: str) -> list[SchemaVersion]:
    """All versions of ``topic``'s schema, oldest first; the last one is current."""
    version_for(topic)
    return list(_HISTORIES[topic])


def by_fingerprint(fp: int) -> SchemaVersion | None:
    """The schema version with CRC-64-AVRO fingerprint ``fp`` (little-endian integer), if any."""
    return REGISTRY.get(fp)
