"""Where analysts look for tables, every table the sink writes is named: `carnival query --help` and the
topic -> table list of docs/analytics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from carnival.cli import main
from sinks.tables import TABLE_FOR_TOPIC

ANALYTICS_DOC = Path(__file__).resolve().parents[3] / "docs" / "analytics.md"


def test_query_help_names_every_sink_table_and_the_site_views() -> None:
    result = CliRunner().invoke(main, ["query", "--help"])
    assert result.exit_code == 0, result.output
    named = set(re.findall(r"\w+", result.output))
    missing = set(TABLE_FOR_TOPIC.values()) - named
    assert not missing
    assert {"site_capacity_latest", "site_power_latest", "spillover_episodes_latest"} <= named


@pytest.mark.parametrize(("topic", "table"), sorted(TABLE_FOR_TOPIC.items()))
def test_analytics_doc_lists_each_topic_with_its_table(topic: str, table: str) -> None:
    rows = re.findall(r"^\| (\S+) \| (\w+)", ANALYTICS_DOC.read_text(), re.M)
    assert (topic, table) in rows
