"""Exceptions of the streams package: one type per failure class, each with a dead-letter ``kind``."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "BrokerUnreachable",
    "CarnivalStreamsError",
    "SerializationError",
    "SerializationErrorKind",
    "ValidationError",
]

SerializationErrorKind = Literal["UNKNOWN_FINGERPRINT", "DECODE", "ENCODE", "BAD_MAGIC", "REGISTRY"]


class CarnivalStreamsError(Exception):
    """Base of every error raised by ``streams``; ``kind`` goes to ``deadletter.v1.error_kind``."""

    kind: str = "PROCESSING"


class SerializationError(CarnivalStreamsError):
    """Bytes could not be encoded or decoded.

    ``kind`` is UNKNOWN_FINGERPRINT (writer schema not known), DECODE (body does not match the
    writer schema), ENCODE (record does not match the topic schema), BAD_MAGIC (not single-object
    or Confluent framing), or REGISTRY (the schema registry could not be reached: transient, retry
    rather than dead-letter).
    """

    def __init__(self, kind: SerializationErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class ValidationError(CarnivalStreamsError, ValueError):
    """A JSON input record does not satisfy its topic's contract.

    ``field`` names the offending field (None for record-level problems); ``kind`` is VALIDATION,
    or MALFORMED_JSON when the line is not a JSON object at all.
    """

    def __init__(self, message: str, field: str | None = None, kind: str = "VALIDATION") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.kind = kind


class BrokerUnreachable(CarnivalStreamsError):
    """The Kafka cluster did not answer within the connect timeout; the message says what was tried for
    how long and which settings to check (one line for the operator, not a retry loop on the terminal)."""
