"""A shortened `carnival demo` against the test stack: the whole main job (workers, simulator, alert
router to the demo's webhook receiver, ledger recompute) ends with every check of the report PASS.

The window (seed 7, two sites, 21:00-01:00 UTC) holds two failovers of the east-coast evening peak;
the checks' failing cases (faults missed, unexplained incidents, lost alerts, ...) are unit-tested on
hand-made rows in tests/unit/test_demo_report.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sinks.clickhouse import get_client

pytestmark = pytest.mark.integration

ARGS = ("demo", "--cars", "40", "--sites", "2", "--start", "2025-01-06T21:00:00Z", "--duration", "4h",
        "--speed", "480", "--seed", "7")  # fmt: skip


def test_short_demo_checks_pass(run_cli, settings, stack_env) -> None:  # type: ignore[no-untyped-def]
    result = run_cli(*ARGS, timeout=170)
    out = result.stdout.decode()
    assert result.returncode == 0, out[-4000:] + result.stderr.decode()[-3000:]
    verdicts = re.findall(r"^\[(PASS|FAIL)\] (.+?):", out, re.MULTILINE)
    assert len(verdicts) >= 12 and all(v == "PASS" for v, _ in verdicts), verdicts
    assert re.search(r"== Checks: (\d+)/\1 PASS", out)
    assert "found  FAILOVER" in out and "MISSED" not in out
    assert (Path(stack_env["CARNIVAL_DATA_DIR"]) / "report.txt").read_text() in out

    # The alerts went the whole way: alerts.v1 -> router -> webhook -> alert_deliveries.
    client = get_client(settings)
    fired = client.query("SELECT uniqExact(fingerprint) FROM alerts WHERE status = 'FIRING' "
                         "AND starts_at >= '2025-01-06 21:00:00'").result_rows[0][0]  # fmt: skip
    delivered = client.query(
        "SELECT uniqExact(fingerprint) FROM alert_deliveries WHERE status = 'FIRING' "
        "AND starts_at >= '2025-01-06 21:00:00'"
    ).result_rows[0][0]
    assert fired >= 2 and delivered == fired
    # Off a terminal the status comes as periodic log lines, not a live line.
    assert '"event": "demo_status"' in result.stderr.decode()
