"""What a failed insert means for its batch: retry it as is, make it smaller, or find the bad records.

ClickHouse answers an insert with an error code. The sink needs one question answered: would the same
rows fail again, whatever the server's state? Three answers:

- ``REJECTED``: the data itself is refused (a parse or type error, a value out of a column's range, a
  constraint). Retrying the same rows can never succeed; the batch is split in halves down to the
  records that fail on their own, which go to ``deadletter.v1`` (SINK_REJECTED) with the error.
- ``TOO_BIG``: the insert as a whole is too much, not any one row (more table partitions than
  ``max_partitions_per_insert_block``, a memory limit). Smaller inserts may pass: the batch is halved;
  a small insert that still fails is retried with backoff (then it was the server, not the batch).
- ``TRANSIENT``: anything else: the server or the network (connection refused, timeouts, 5xx without a
  code, too many parts because merges lag behind, a read-only or missing table waiting for an operator)
  and codes not listed here. Retried as is, with backoff and the same deduplication token; nothing is
  dead-lettered for an error that says nothing about the rows, so an unknown code can stall a topic
  (loudly: ``carnival_sink_insert_retries_total``) but never discard data.

TOO_MANY_PARTS (252) is both: "Too many partitions for single INSERT block" is the batch's own doing
(TOO_BIG), "Too many parts ... merges are processing significantly slower than inserts" is the table's
state (TRANSIENT). The sink already splits every insert at the table's partition key, so the first
should not happen; it is still classified for tables whose key the sink cannot evaluate.
"""

from __future__ import annotations

import re
from enum import Enum

_CODE_RE = re.compile(r"Code: (\d+)")


class Verdict(Enum):
    TRANSIENT = "transient"
    TOO_BIG = "too_big"
    REJECTED = "rejected"


# The data cannot be parsed or does not fit its column: the same rows always fail.
REJECTED_CODES = {
    6,  # CANNOT_PARSE_TEXT
    25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,  # CANNOT_PARSE_QUOTED_STRING
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  # ATTEMPT_TO_READ_AFTER_EOF
    33,  # CANNOT_READ_ALL_DATA
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    44,  # ILLEGAL_COLUMN
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407,  # DECIMAL_OVERFLOW
    469,  # VIOLATED_CONSTRAINT
    691,  # UNKNOWN_ELEMENT_OF_ENUM
}
STD_EXCEPTION = 1001  # rejected when it is the Avro reader's ("type: avro::Exception"), e.g. a bool byte 2
# The insert is too large as a whole; its parts may each pass.
TOO_BIG_CODES = {
    173,  # CANNOT_ALLOCATE_MEMORY
    241,  # MEMORY_LIMIT_EXCEEDED
}
TOO_MANY_PARTS = 252
_PARTITIONS_PER_INSERT = "partitions for single insert block"


def error_code(message: str) -> int | None:
    m = _CODE_RE.search(message)
    return int(m.group(1)) if m else None


def classify(code: int | None, message: str) -> Verdict:
    """The verdict for a ClickHouse error ``code`` (None: no code, e.g. a proxy's 502) and its text."""
    if code in REJECTED_CODES or (code == STD_EXCEPTION and "avro::exception" in message.lower()):
        return Verdict.REJECTED
    if code in TOO_BIG_CODES:
        return Verdict.TOO_BIG
    if code == TOO_MANY_PARTS and _PARTITIONS_PER_INSERT in message.lower():
        return Verdict.TOO_BIG
    return Verdict.TRANSIENT
