"""Kafka plumbing shared by every component: serialization, validation, topics, produce/consume.

Public serialization API (the rest lives in the submodules that need their own dependencies):
``AvroSerde`` / ``serde_from_settings`` to encode and decode topic values, ``parse_json_record`` /
``to_json_record`` for JSON lines, and the two error types every caller catches.
"""

from streams.exceptions import CarnivalStreamsError, SerializationError, ValidationError
from streams.records import parse_json_record, to_json_record
from streams.serde import AvroSerde, serde_from_settings

__all__ = [
    "AvroSerde",
    "CarnivalStreamsError",
    "SerializationError",
    "ValidationError",
    "parse_json_record",
    "serde_from_settings",
    "to_json_record",
]
