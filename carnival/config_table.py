"""Every knob in one table (``carnival config``; ``docs/configuration.md`` is its markdown form).

Rows come from the declarations themselves, never from the current environment: the fields of
``core.settings.Settings`` and its groups (descriptions from ``Field(description=...)``), and the
processors' config dataclasses registered below (descriptions from their attribute docstrings or
comments), so a new field shows up here without anyone writing it twice.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from core.settings import GROUPS, Settings
from processors.power.config import PowerConfig, PowerKnobs
from processors.scheduler.config import SchedulerConfig
from processors.scheduler.wiring_runtime import WorkerKnobs

REGENERATE = "carnival config --format markdown > docs/configuration.md"

# Processor dataclasses whose fields are CARNIVAL_<GROUP>_<FIELD> (core keeps their raw values only).
PROCESSOR_CONFIGS: dict[str, tuple[type, ...]] = {
    "scheduler": (SchedulerConfig, WorkerKnobs),
    "power": (PowerConfig, PowerKnobs),
}
_SECTIONS = {"kafka": "Kafka", "schema_registry": "Kafka", "topic": "Kafka", "clickhouse": "ClickHouse"}
_GROUP_TITLES = {
    "scheduler": "Scheduler (`SchedulerConfig`, then the worker's `WorkerKnobs`)",
    "power": "Power detector (`PowerConfig`, then the worker's `PowerKnobs`)",
    "sink": "ClickHouse sink",
    "alerts": "Alert router (`carnival alerts route` options win)",
}


@dataclass(frozen=True)
class Row:
    section: str
    env: str
    type: str
    default: str
    description: str


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:[a-z_]+\.)+([A-Za-z_]+)", r"\1", str(text))  # pydantic.types.SecretStr -> SecretStr
    return text.replace("NoneType", "None").replace("typing.", "")


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return "(unset)" if not value.get_secret_value() else "(secret)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, frozenset):
        return ",".join(sorted(value)) or "(empty)"
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return ",".join(f"{k}={v}" for k, v in value)
    if isinstance(value, tuple | list):
        return ",".join(map(str, value)) or "(empty)"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    if value == "":
        return '""'
    return str(value)


def _model_default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def _docstring(node: ast.stmt) -> str | None:
    value = node.value.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) else None
    return value if isinstance(value, str) else None


def field_docs(cls: type) -> dict[str, str]:
    """Field -> its documentation in ``cls``'s source: the docstring after it, else the comment block
    above it plus its trailing comment (section rulers ``# ---`` excluded)."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}  # fmt: skip
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        docstring = _docstring(body[i + 1]) if i + 1 < len(body) else None
        if docstring is not None:
            docs[node.target.id] = " ".join(docstring.split())
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#") and not comments[line].startswith("-"):
            above.insert(0, comments[line])
            line -= 1
        trailing = comments.get(node.end_lineno or node.lineno, "")
        if trailing and not lines[(node.end_lineno or node.lineno) - 1].strip().startswith("#"):
            above.append(trailing)
        docs[node.target.id] = " ".join(above)
    return docs


def _settings_rows() -> Iterator[Row]:
    for name, field in Settings.model_fields.items():
        if name in GROUPS:
            continue
        section = next((title for prefix, title in _SECTIONS.items() if name.startswith(prefix)), "Process")
        yield Row(section, f"CARNIVAL_{name.upper()}", _type_name(field.annotation),
                  _show(_model_default(Settings, name)), field.description or "")  # fmt: skip


def _group_rows(group: str) -> Iterator[Row]:
    prefix, title = GROUPS[group], _GROUP_TITLES[group]
    if group in PROCESSOR_CONFIGS:
        classes = PROCESSOR_CONFIGS[group]
        what = f"fields of {classes[0].__name__} (below) as one JSON object; the per-field variables win"
        yield Row(title, f"{prefix}CONFIG", "JSON object", "{}", what)
        for cls in classes:
            docs = field_docs(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    yield Row(title, f"{prefix}{f.name.upper()}", _type_name(f.type), _show(f.default),
                              docs.get(f.name, ""))  # fmt: skip
        return
    model = Settings.model_fields[group].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    for name, field in model.model_fields.items():
        yield Row(title, f"{prefix}{name.upper()}", _type_name(field.annotation),
                  _show(_model_default(model, name)), field.description or "")  # fmt: skip


def rows() -> list[Row]:
    out = sorted(_settings_rows(), key=lambda r: ["Kafka", "ClickHouse", "Process"].index(r.section))
    for group in GROUPS:
        out.extend(_group_rows(group))
    return out


def render_text() -> str:
    lines = []
    for section in dict.fromkeys(r.section for r in rows()):
        lines.append(f"{section}:")
        for r in (r for r in rows() if r.section == section):
            lines.append(f"  {r.env:52} {r.type:24} {r.default:22} {r.description}".rstrip())
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    out = [
        "# Configuration",
        "",
        f"Generated by `{REGENERATE}` from the declarations (`core/settings.py` and the processors'",
        "config dataclasses): edit those, then regenerate; a unit test fails while this file is out of date.",
        "",
        "Every setting is an environment variable; unset ones keep the default. Secrets (`SecretStr`) never",
        "appear in a repr, a log line or `carnival stack status`. The Kafka security settings and the",
        "`CARNIVAL_KAFKA_EXTRA_CONFIG` passthrough reach every client: the confluent producers, consumers",
        "and admin clients, the schema registry client (the TLS files when its URL is https) and the faust",
        "processors (`broker_credentials`, see `processors/runtime/faust_auth.py` for what aiokafka",
        "cannot express).",
    ]
    for section in dict.fromkeys(r.section for r in rows()):
        out += ["", f"## {section}", "", "| Variable | Type | Default | Description |", "|---|---|---|---|"]
        out += [f"| `{r.env}` | `{_cell(r.type)}` | `{_cell(r.default)}` | {_cell(r.description)} |"
                for r in rows() if r.section == section]  # fmt: skip
    return "\n".join(out) + "\n"


def docs_path() -> Path:
    return Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
