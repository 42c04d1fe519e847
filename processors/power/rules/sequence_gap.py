"""SEQUENCE_GAP: a device's sequence numbers skipped events that did not arrive within the allowance.

One incident per device (``gap:<device>``); a further gap while it is open is an UPDATE. The incident
keeps the missing ranges it reported (``ranges``, at most 16) and the count still missing: when late
events fill them all it resolves at once (nothing was lost, the recorder uploaded late), a partial fill
is an UPDATE; otherwise it resolves after ``gap_hold_s`` without another gap from that device.
"""

from __future__ import annotations

from processors.power.config import PowerConfig
from processors.power.kinds import SEQUENCE_GAP
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.site import Site

__all__ = ["SequenceGapRule"]

_MAX_RANGES = 16
_MAX_MISSING = 2**63 - 1  # the count stays a 64-bit integer (the state is JSON), however seq jumps


def _seqs(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


class SequenceGapRule(Rule):
    kinds = (SEQUENCE_GAP,)
    signals = frozenset({"gap", "gap_filled"})

    def __init__(self, config: PowerConfig) -> None:
        super().__init__(config)
        self.hold = config.us(config.gap_hold_s)

    def notify_at(self, site: Site) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for key, inc in site.open.items():
            if key.startswith("gap:") and (best is None or inc["last"] + self.hold < best[0]):
                best = (inc["last"] + self.hold, key)
        return best

    def on_notify(self, site: Site, due: int, tag: str) -> None:
        inc = site.open[tag]
        site.emit(
            tag,
            "RESOLVED",
            due,
            f"{site.site_id}: device {inc['device']} reported without gaps for "
            f"{_dur(self.hold)} ({inc['missing']} events missing in total)",
            ended=inc["last"],
        )

    def on_signal(self, site: Site, sig: Signal) -> None:
        if sig.name == "gap":
            self._gap(site, sig)
        else:
            self._filled(site, sig)

    def _gap(self, site: Site, sig: Signal) -> None:
        gap = sig.gap
        assert gap is not None
        site.stats["gaps"] += 1
        key = "gap:" + gap.device_id
        seqs = _seqs(gap.first, gap.last)
        inc = site.open.get(key)
        if inc is None:
            site.open_incident(
                key,
                SEQUENCE_GAP,
                gap.ts,
                gap.ts,
                f"{site.site_id}: device {gap.device_id} skipped {seqs} ({gap.count} events "
                f"lost); check the device link, incidents of that period may be incomplete",
                device=gap.device_id,
                last=gap.ts,
                missing=min(gap.count, _MAX_MISSING),
                ranges=[[gap.first, gap.last]],
            )
            return
        inc["last"] = gap.ts
        inc["missing"] = min(inc["missing"] + gap.count, _MAX_MISSING)
        if "ranges" in inc:
            inc["ranges"] = [*inc["ranges"], [gap.first, gap.last]][-_MAX_RANGES:]
        site.emit(
            key,
            "UPDATE",
            gap.ts,
            f"{site.site_id}: device {gap.device_id} skipped {seqs} too "
            f"({inc['missing']} events lost so far)",
        )

    def _filled(self, site: Site, sig: Signal) -> None:
        """A late event filled a reported hole: if it is one of this incident's, it was not lost."""
        e = sig.event
        assert e is not None
        key = "gap:" + e["device_id"]
        inc = site.open.get(key)
        seq = e["seq"]
        rng = next((r for r in (inc or {}).get("ranges", ()) if r[0] <= seq <= r[1]), None)
        if inc is None or rng is None:
            return  # a hole of an earlier, resolved incident (or of a state without ranges)
        ranges = [r for r in inc["ranges"] if r is not rng]
        ranges += [r for r in ([rng[0], seq - 1], [seq + 1, rng[1]]) if r[0] <= r[1]]
        inc["ranges"] = ranges
        inc["missing"] -= 1
        if inc["missing"] <= 0:
            site.emit(
                key,
                "RESOLVED",
                sig.t,
                f"{site.site_id}: the events device {inc['device']} skipped arrived late; nothing was lost",
                ended=sig.t,
            )
        else:
            site.emit(
                key,
                "UPDATE",
                sig.t,
                f"{site.site_id}: seq {seq} of device {inc['device']} arrived late "
                f"({inc['missing']} events still missing)",
            )
