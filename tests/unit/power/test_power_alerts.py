"""Incident -> alerts.v1 mapping: fingerprints, severities, statuses, Avro round trip."""

from __future__ import annotations

import pytest

from processors.power import Incident, alert_for_incident, fingerprint
from streams.serde import AvroSerde

T = 1_700_000_000_000_000


def incident(kind: str, state: str = "OPEN", parent: str | None = None, **kw: object) -> Incident:
    return Incident(incident_id=f"dc-1/{kind}/{T}", site_id="dc-1", kind=kind, state=state, started_us=T,
                    summary=f"{kind} happened", updated_us=T + 5_000_000, parent_incident_id=parent,
                    **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(("kind", "severity"), [
    ("FAILED_TRANSFER", "critical"), ("GEN_START_FAILURE", "critical"), ("BATTERY_RESERVE", "critical"),
    ("SLOW_TRANSFER", "warning"), ("FLAPPING", "warning"), ("PQ_EXCURSION", "warning"),
    ("LOAD_SHED", "warning"),
    ("SEQUENCE_GAP", "warning"), ("SITE_SILENT", "warning"), ("FAILOVER", "info"),
])  # fmt: skip
def test_every_kind_has_a_severity(kind: str, severity: str) -> None:
    alert = alert_for_incident(incident(kind))
    assert alert is not None
    assert (alert["severity"], alert["status"], alert["kind"], alert["site_id"]) == (
        severity,
        "FIRING",
        kind,
        "dc-1",
    )
    assert alert["labels"]["severity"] == severity and alert["labels"]["site_id"] == "dc-1"


def test_site_silent_mid_incident_is_critical() -> None:
    alert = alert_for_incident(incident("SITE_SILENT", parent="dc-1/FAILOVER/1"))
    assert alert is not None and alert["severity"] == "critical"
    assert alert["summary"].startswith("[CRITICAL]")


def test_open_and_resolved_share_a_fingerprint_and_update_is_silent() -> None:
    firing = alert_for_incident(incident("FAILED_TRANSFER"))
    resolved = alert_for_incident(incident("FAILED_TRANSFER", "RESOLVED", ended_us=T + 9_000_000))
    assert alert_for_incident(incident("FAILED_TRANSFER", "UPDATE")) is None
    assert firing and resolved
    expected = fingerprint("FAILED_TRANSFER", "dc-1", f"dc-1/FAILED_TRANSFER/{T}")
    assert firing["fingerprint"] == resolved["fingerprint"] == expected
    assert resolved["status"] == "RESOLVED" and resolved["ends_at"].timestamp() == (T + 9_000_000) / 1e6
    assert firing["ends_at"] is None
    other = alert_for_incident(Incident(
        incident_id="dc-1/FAILED_TRANSFER/1", site_id="dc-1", kind="FAILED_TRANSFER", state="OPEN",
        started_us=1, summary="x", updated_us=1))  # fmt: skip
    assert other and other["fingerprint"] != firing["fingerprint"]


def test_records_encode_with_the_topic_schemas_and_decoded_incidents_map_the_same() -> None:
    serde = AvroSerde()
    inc = incident(
        "BATTERY_RESERVE",
        transfer_ms=4.2,
        min_battery_soc_pct=9.5,
        gens_online=2,
        load_mw=11.0,
        time_on_alternate_ms=1000.0,
        source_from="GRID",
        source_to="BATTERY",
        device_id="bat-1",
    )
    decoded = serde.decode("power.incidents.v1", serde.encode("power.incidents.v1", inc.to_record()))
    assert decoded["gens_online"] == 2 and decoded["parent_incident_id"] is None
    from_decoded = alert_for_incident(decoded)
    direct = alert_for_incident(inc)
    assert from_decoded == direct
    assert direct is not None
    assert (
        serde.decode("alerts.v1", serde.encode("alerts.v1", direct))["fingerprint"] == direct["fingerprint"]
    )
    assert direct["labels"]["min_battery_soc_pct"] == "9.5"
