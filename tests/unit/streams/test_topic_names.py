"""One name for each topic: the names are constants of the topic spec (streams/topics.py) and every
other module imports them; a topic name spelled out anywhere else in the package code fails here."""

from __future__ import annotations

import ast
from pathlib import Path

from streams.topics import TOPICS

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("core", "streams", "sinks", "processors", "simulator", "carnival")
DECLARED_IN = ROOT / "streams" / "topics.py"


def _spelled_out(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TOPICS
    ]


def test_topic_names_are_declared_once() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name!r}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != DECLARED_IN
        for line, name in _spelled_out(path)
    ]
    assert found == [], "import the constant from streams.topics instead:\n" + "\n".join(found)


def test_the_finder_sees_a_spelled_out_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('TOPIC = "fleet.telemetry.v1"\n')
    assert _spelled_out(module) == [(1, "fleet.telemetry.v1")]
