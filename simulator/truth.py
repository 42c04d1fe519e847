"""Ground truth, written apart from the topics: what really happened, for scoring the pipeline.

One JSON object per line with a ``type``: ``config``, ``car`` (incl. ``faulty``), ``task`` (every request,
with its true run time), ``charge_session`` (plug-in, true departure, the departure the car reported),
``failover`` (site, start/end in microseconds, injected ``fault`` and the incidents a detector should
open), ``session`` (each emulator session's outcome). Times are epoch milliseconds unless the key ends
in ``_us``. The pipeline never reads this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import orjson


class Truth:
    """Discards everything: the default when no truth file is wanted."""

    rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.rows += 1

    def close(self) -> None:
        pass


class TruthFile(Truth):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self._fh.write(orjson.dumps(row) + b"\n")

    def close(self) -> None:
        self._fh.close()


class TruthList(Truth):
    """Keeps rows in memory (tests)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows += 1
        self.items.append(row)
