"""SLOW_TRANSFER: the transfer took longer than the switch type allows.

Limits: ``sts_transfer_limit_ms`` for a static transfer switch (nominal a quarter cycle; the default
alarms past half a cycle so meter/switch skew does not page), ``ats_transfer_limit_ms`` (NFPA 110 Type
10) for every other device. A transfer after a FAILED_TRANSFER was raised is not also slow. Resolves
with the episode.
"""

from __future__ import annotations

from processors.power.kinds import SLOW_TRANSFER
from processors.power.rules.base import Rule, Signal
from processors.power.rules.base import fmt_duration as _dur
from processors.power.rules.site import Site

__all__ = ["SlowTransferRule"]

KEY = "slow"


class SlowTransferRule(Rule):
    kinds = (SLOW_TRANSFER,)
    signals = frozenset({"transferred", "episode_end"})

    def on_signal(self, site: Site, sig: Signal) -> None:
        if sig.name == "episode_end":
            self.resolve_with_episode(site, KEY, sig.t)
            return
        ep, e, lost_at, t = site.ep, sig.event, sig.lost_at, sig.t
        assert ep is not None and e is not None and lost_at is not None
        if ep["failed_for"] == lost_at:
            return  # already reported as failed; a slow-transfer alert would only repeat it
        ms = (t - lost_at) / 1000
        cfg = self.config
        limit = cfg.sts_transfer_limit_ms if e["device_type"] == "STS" else cfg.ats_transfer_limit_ms
        if ms <= limit:
            return
        text = (
            f"{site.site_id}: {e['device_type']} {e['device_id']} transferred {ep['from']} -> {sig.to} in "
            f"{_dur(t - lost_at)} (limit {_dur(limit * 1000)}); inspect the switch before the next failover"
        )
        if KEY in site.open:
            site.open[KEY]["transfer_ms"] = ms
            site.emit(KEY, "UPDATE", t, text)
        else:
            site.open_incident(
                KEY,
                SLOW_TRANSFER,
                lost_at,
                t,
                text,
                device=e["device_id"],
                transfer_ms=ms,
                source_from=ep["from"],
                source_to=sig.to,
            )
