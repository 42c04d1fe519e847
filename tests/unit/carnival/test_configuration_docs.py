"""docs/configuration.md is the generated table of every knob, and it is up to date."""

from __future__ import annotations

import dataclasses

from click.testing import CliRunner

from carnival.cli import main
from carnival.config_table import PROCESSOR_CONFIGS, REGENERATE, docs_path, field_docs, render_markdown, rows
from core.settings import GROUPS, Settings


def test_docs_configuration_is_up_to_date() -> None:
    assert docs_path().read_text() == render_markdown(), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_the_command_prints_the_same_table() -> None:
    result = CliRunner().invoke(main, ["config", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert result.output == render_markdown()
    text = CliRunner().invoke(main, ["config"]).output
    assert "CARNIVAL_KAFKA_SASL_PASSWORD" in text and "CARNIVAL_POWER_TICK_S" in text


def test_every_knob_has_a_documented_row() -> None:
    documented = {r.env: r for r in rows()}
    wanted = {f"CARNIVAL_{n.upper()}" for n in Settings.model_fields if n not in GROUPS}
    for group, classes in PROCESSOR_CONFIGS.items():
        wanted.add(f"{GROUPS[group]}CONFIG")
        names = [f.name for c in classes for f in dataclasses.fields(c) if f.init]
        wanted |= {f"{GROUPS[group]}{name.upper()}" for name in names}
    for group in ("sink", "alerts"):
        model = Settings.model_fields[group].annotation
        wanted |= {f"{GROUPS[group]}{n.upper()}" for n in model.model_fields}  # type: ignore[union-attr]
    assert set(documented) == wanted
    assert [env for env, r in documented.items() if not r.description] == []


def test_field_docs_reads_docstrings_and_comments() -> None:
    @dataclasses.dataclass
    class Example:
        # --- a ruler, not a description
        a: int = 1  # trailing
        # above b
        # and more
        b: int = 2
        c: int = 3
        """docstring of c"""

    assert field_docs(Example) == {"a": "trailing", "b": "above b and more", "c": "docstring of c"}
