"""What a report section is: lines to read, and checks that PASS or FAIL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> Check:
        made = Check(name, ok, detail)
        self.checks.append(made)
        return made

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile (None for no values): the same rule for every percentile in the report."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]
