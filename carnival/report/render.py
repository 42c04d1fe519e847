"""Sections as text: a heading, the lines, then each check with its verdict; a summary at the end."""

from __future__ import annotations

from typing import TextIO

from carnival.report.model import Section


def render(sections: list[Section], out: TextIO) -> None:
    for section in sections:
        out.write(f"\n== {section.title}\n")
        for line in section.lines:
            out.write(f"{line}\n")
        for check in section.checks:
            out.write(f"[{check.verdict}] {check.name}: {check.detail}\n")
    checks = [c for s in sections for c in s.checks]
    failed = [c for c in checks if not c.ok]
    out.write(f"\n== Checks: {len(checks) - len(failed)}/{len(checks)} PASS")
    out.write(f"; FAILED: {'; '.join(c.name for c in failed)}\n" if failed else "\n")
