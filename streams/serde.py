"""Avro encode/decode for every topic, with schema evolution resolved on read.

Default wire format is Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's Parsing Canonical Form + the schemaless body. ``schemas/`` is the
registry: the fingerprint finds the writer schema (current or historical) and the body is resolved
to the topic's current schema, so old data reads as new records.

With a Confluent-compatible registry the Confluent framing is written instead (``00`` + 4-byte
big-endian schema id + body, subject ``<topic>-value``). Decoding accepts both framings, so a topic
can be migrated without a flag day.
"""

from __future__ import annotations

import json
import struct
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

import schemas
from streams.avro_codegen import Encoder, compile_encoder
from streams.exceptions import SerializationError, SerializationErrorKind
from streams.json_plan import JsonPlan, compile_json_plan

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["SINGLE_OBJECT_MAGIC", "CONFLUENT_MAGIC", "AvroSerde", "serde_from_settings"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SO_HEADER = 10  # magic (2) + fingerprint (8)
_CF_HEADER = 5  # magic (1) + schema id (4)

_NOT_COMPILED = object()

# (writer parsed schema, reader parsed schema or None, defaults to add after reading with the writer).
# The common evolution "reader = writer + fields with scalar defaults" reads with the writer schema
# alone and adds the defaults: twice as fast as fastavro's on-the-fly resolution.
_Pair = tuple[dict[str, Any], dict[str, Any] | None, tuple[tuple[str, Any], ...]]


def _resolve(writer_parsed: dict[str, Any], writer_canonical: str, reader: schemas.SchemaVersion) -> _Pair:
    """Plan how to read data written with ``writer`` as records of ``reader``."""
    if writer_canonical == reader.canonical:
        return writer_parsed, None, ()
    if not isinstance(writer_parsed, dict) or writer_parsed.get("type") != "record":
        return writer_parsed, reader.parsed, ()
    raw = reader.raw
    writer_names = {f["name"] for f in writer_parsed.get("fields", ())}
    kept = [f for f in raw["fields"] if f["name"] in writer_names]
    added = [f for f in raw["fields"] if f["name"] not in writer_names]
    scalar = all(
        "default" in f
        and (
            f["default"] is None or (isinstance(f["default"], (bool, int, float, str)) and _plain(f["type"]))
        )
        for f in added
    )
    if scalar and to_parsing_canonical_form({**raw, "fields": kept}) == writer_canonical:
        return writer_parsed, None, tuple((f["name"], f["default"]) for f in added)
    return writer_parsed, reader.parsed, ()


def _plain(field_type: Any) -> bool:
    """Whether a default of this type reads back as the JSON literal itself (no logical type)."""
    return isinstance(field_type, str) or (isinstance(field_type, dict) and "logicalType" not in field_type)


class AvroSerde:
    """Encodes records of a topic with its current schema; decodes any known writer version.

    ``registry`` is a confluent_kafka.schema_registry client; None means single-object encoding
    with ``schemas/`` as the registry. Instances are cheap to share; caches only grow by the number
    of schema versions seen.
    """

    def __init__(self, registry: Any | None = None, raw_timestamps: bool = False) -> None:
        self.registry = registry
        # raw_timestamps: decode timestamps as epoch ints in the field's unit instead of datetimes
        # (about 40% faster; for readers that re-format them anyway, like `carnival consume`).
        self.raw_timestamps = raw_timestamps
        self._prefix: dict[str, bytes] = {}  # topic -> framing header for encode
        self._fast: dict[str, object] = {}  # topic -> generated single-object encoder (or None)
        self._plans: dict[str, object] = {}  # topic -> generated JSON line -> Avro plan (or None)
        self._pairs: dict[tuple[str, int], _Pair] = {}  # (topic, fingerprint or schema id) -> pair
        self._cf_writers: dict[int, tuple[dict[str, Any], str]] = {}  # schema id -> (parsed, canonical)

    # -- encode -------------------------------------------------------------------------------
    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        """Serialize ``record`` with ``topic``'s current schema (timestamps as datetime or int)."""
        fast = self._fast.get(topic, _NOT_COMPILED)
        if fast is _NOT_COMPILED:
            fast = self._fast[topic] = self._compile(topic)
        if fast is not None:
            try:
                return fast(record)  # type: ignore[operator]
            except (TypeError, KeyError, AttributeError, ValueError, struct.error, OverflowError):
                pass  # fastavro below gives the precise error (or handles what codegen does not)
        return self._encode_fastavro(topic, record)

    def json_plan(self, topic: str) -> JsonPlan | None:
        """The compiled JSON line -> validated Avro fast path of ``topic`` (``streams.json_plan``); None
        with a registry (Confluent framing) or for a topic whose shapes it does not cover."""
        plan = self._plans.get(topic, _NOT_COMPILED)
        if plan is _NOT_COMPILED:
            plan = None
            if self.registry is None:
                try:
                    plan = compile_json_plan(topic)
                except (TypeError, KeyError):
                    plan = None
            self._plans[topic] = plan
        return plan  # type: ignore[return-value]

    def _compile(self, topic: str) -> Encoder | None:
        if self.registry is not None:
            return None  # Confluent framing: the schema id comes from the registry
        try:
            return compile_encoder(topic)
        except (TypeError, KeyError):
            return None

    def _encode_fastavro(self, topic: str, record: dict[str, Any]) -> bytes:
        prefix = self._prefix.get(topic)
        if prefix is None:
            prefix = self._header(topic)
        buf = BytesIO()
        buf.write(prefix)
        try:
            schemaless_writer(buf, schemas.TOPIC_SCHEMAS[topic], record)
        except Exception as exc:  # fastavro raises ValueError/TypeError/AttributeError/KeyError...
            raise SerializationError("ENCODE", f"{topic}: {type(exc).__name__}: {exc}") from exc
        return buf.getvalue()

    def _header(self, topic: str) -> bytes:
        try:
            sv = schemas.version_for(topic)
        except KeyError as exc:
            raise SerializationError("ENCODE", str(exc.args[0])) from None
        if self.registry is None:
            prefix = SINGLE_OBJECT_MAGIC + sv.fingerprint_bytes
        else:
            schema_id = self._register(topic, sv)
            prefix = bytes([CONFLUENT_MAGIC]) + schema_id.to_bytes(4, "big")
        self._prefix[topic] = prefix
        return prefix

    def _register(self, topic: str, sv: schemas.SchemaVersion) -> int:
        from confluent_kafka.schema_registry import Schema, SchemaRegistryError

        assert self.registry is not None
        try:
            return int(self.registry.register_schema(f"{topic}-value", Schema(json.dumps(sv.raw), "AVRO")))
        except SchemaRegistryError as exc:
            kind: SerializationErrorKind = "ENCODE" if exc.http_status_code in (409, 422) else "REGISTRY"
            raise SerializationError(kind, f"registering {topic}-value: {exc}") from exc
        except Exception as exc:
            raise SerializationError("REGISTRY", f"registering {topic}-value: {exc}") from exc

    # -- decode -------------------------------------------------------------------------------
    def decode(self, topic: str, data: bytes) -> dict[str, Any]:
        """Deserialize ``data`` into a record of ``topic``'s current schema.

        Timestamps come back as timezone-aware UTC datetimes. Raises SerializationError.
        """
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= _SO_HEADER:
            fp = int.from_bytes(data[2:_SO_HEADER], "little")
            pair = self._pairs.get((topic, fp))
            if pair is None:
                pair = self._single_object_pair(topic, fp)
            start = _SO_HEADER
        elif data[:1] == b"\x00" and len(data) >= _CF_HEADER:
            schema_id = int.from_bytes(data[1:_CF_HEADER], "big")
            pair = self._pairs.get((topic, -1 - schema_id))  # negative keys: no clash with fingerprints
            if pair is None:
                pair = self._confluent_pair(topic, schema_id)
            start = _CF_HEADER
        else:
            raise SerializationError(
                "BAD_MAGIC",
                f"{topic}: expected C3 01 (single-object) or 00 (Confluent), got {bytes(data[:2])!r}",
            )
        buf = BytesIO(data)
        buf.seek(start)
        try:
            record = cast(dict[str, Any], schemaless_reader(buf, pair[0], pair[1]))
            for name, default in pair[2]:
                record[name] = default
        except Exception as exc:  # truncated body, bad varint, bad utf-8, unresolvable union, ...
            raise SerializationError("DECODE", f"{topic}: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise SerializationError(
                "DECODE", f"{topic}: {len(data) - buf.tell()} trailing bytes after record"
            )
        return record

    def _reader(self, topic: str) -> schemas.SchemaVersion:
        try:
            return schemas.version_for(topic)
        except KeyError as exc:
            raise SerializationError("DECODE", str(exc.args[0])) from None

    def _single_object_pair(self, topic: str, fp: int) -> _Pair:
        reader = self._reader(topic)
        writer = schemas.by_fingerprint(fp)
        if writer is None:
            raise SerializationError("UNKNOWN_FINGERPRINT", f"{topic}: no schema with fingerprint {fp:016x}")
        pair = self._raw_ts(_resolve(writer.parsed, writer.canonical, reader))
        self._pairs[(topic, fp)] = pair
        return pair

    def _confluent_pair(self, topic: str, schema_id: int) -> _Pair:
        reader = self._reader(topic)
        writer = self._cf_writers.get(schema_id)
        if writer is None:
            writer = self._fetch_writer(topic, schema_id)
        pair = self._raw_ts(_resolve(writer[0], writer[1], reader))
        self._pairs[(topic, -1 - schema_id)] = pair
        return pair

    def _raw_ts(self, pair: _Pair) -> _Pair:
        if not self.raw_timestamps:
            return pair
        writer, reader, *rest = pair
        return (_without_timestamps(writer), None if reader is None else _without_timestamps(reader), *rest)  # type: ignore[return-value]

    def _fetch_writer(self, topic: str, schema_id: int) -> tuple[dict[str, Any], str]:
        if self.registry is None:
            raise SerializationError(
                "BAD_MAGIC", f"{topic}: Confluent framing but no schema registry configured"
            )
        from confluent_kafka.schema_registry import SchemaRegistryError

        try:
            raw = json.loads(self.registry.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            kind: SerializationErrorKind = (
                "UNKNOWN_FINGERPRINT" if exc.http_status_code == 404 else "REGISTRY"
            )
            raise SerializationError(kind, f"{topic}: schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise SerializationError("REGISTRY", f"{topic}: schema id {schema_id}: {exc}") from exc
        writer = (cast(dict[str, Any], parse_schema(raw, named_schemas={})), to_parsing_canonical_form(raw))
        self._cf_writers[schema_id] = writer
        return writer


def _strip_timestamps(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_timestamps(n) for n in node]
    if isinstance(node, dict):
        if str(node.get("logicalType", "")).startswith("timestamp-"):
            return node["type"]
        return {
            k: _strip_timestamps(v)
            for k, v in node.items()
            if k not in ("__fastavro_parsed", "__named_schemas")
        }
    return node


def _without_timestamps(parsed: dict[str, Any]) -> dict[str, Any]:
    """The same schema with timestamp logical types dropped: identical bytes, ints instead of datetimes."""
    return cast(dict[str, Any], parse_schema(_strip_timestamps(parsed), named_schemas={}))


def registry_client(url: str, config: dict[str, str] | None = None) -> Any:
    """A confluent_kafka schema registry client for ``url`` (``mock://...`` gives an in-memory one)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf = {"url": url, **(config or {})}
    # new_client dispatches mock:// URLs to the in-memory client (newer confluent-kafka releases).
    new_client = getattr(SchemaRegistryClient, "new_client", None)
    return new_client(conf) if new_client is not None else SchemaRegistryClient(conf)


def serde_from_settings(settings: Settings) -> AvroSerde:
    """The serde every component uses: Confluent framing iff ``schema_registry_url`` is set; the registry
    client gets its credentials and TLS files from the settings (``Settings.schema_registry_config``)."""
    if not settings.schema_registry_url:
        return AvroSerde(None)
    conf = settings.schema_registry_config()
    return AvroSerde(registry_client(conf.pop("url"), conf))
