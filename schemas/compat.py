"""Structural Avro compatibility check, so schema evolution mistakes fail in CI, not in production.

``backward_problems(old, new)`` lists why a reader using ``new`` could not read data written with
``old`` (plus the project rule that a removed field must have had a default, so old readers keep
working on new data). An empty list means the change is safe.
"""

from __future__ import annotations

from typing import Any

__all__ = ["backward_problems"]

# writer type -> reader types it may be read as (Avro spec "schema resolution" promotions)
_PROMOTIONS: dict[str, set[str]] = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_NAMED = {"record", "enum", "fixed"}


def _full_name(schema: dict[str, Any], namespace: str | None) -> str:
    name = schema["name"]
    if "." in name:
        return name
    ns = schema.get("namespace", namespace)
    return f"{ns}.{name}" if ns else name


class _Walker:
    """Resolves named-type references separately for the writer and the reader side."""

    def __init__(self) -> None:
        self.writer_names: dict[str, Any] = {}
        self.reader_names: dict[str, Any] = {}
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()

    def _norm(self, schema: Any, ns: str | None, names: dict[str, Any]) -> tuple[Any, str | None]:
        """Turn a schema into (dict-or-list, namespace), registering and resolving named types."""
        if isinstance(schema, str):
            if schema in names:
                return names[schema]
            qualified = f"{ns}.{schema}" if ns and "." not in schema else schema
            if qualified in names:
                return names[qualified]
            return {"type": schema}, ns
        if isinstance(schema, list):
            return schema, ns
        if isinstance(schema.get("type"), (dict, list)):
            return self._norm(schema["type"], ns, names)
        if schema.get("type") in _NAMED:
            full = _full_name(schema, ns)
            inner_ns = full.rpartition(".")[0] or None
            names[full] = (schema, inner_ns)
            return schema, inner_ns
        return schema, ns

    def check(
        self, writer: Any, reader: Any, path: str, wns: str | None = None, rns: str | None = None
    ) -> None:
        w, wns = self._norm(writer, wns, self.writer_names)
        r, rns = self._norm(reader, rns, self.reader_names)
        if isinstance(r, list):
            wbranches = w if isinstance(w, list) else [w]
            for wb in wbranches:
                if not any(self._matches(wb, rb, wns, rns) for rb in r):
                    self.problems.append(f"{path}: writer type {self._tname(wb, wns)} not in reader union")
                    continue
                rb = next(rb for rb in r if self._matches(wb, rb, wns, rns))
                self.check(wb, rb, path, wns, rns)
            return
        if isinstance(w, list):
            for wb in w:
                if not self._matches(wb, r, wns, rns):
                    self.problems.append(f"{path}: writer union branch {self._tname(wb, wns)} unreadable")
                else:
                    self.check(wb, r, path, wns, rns)
            return
        wt, rt = w["type"], r["type"]
        if wt != rt:
            if rt not in _PROMOTIONS.get(wt, set()):
                self.problems.append(f"{path}: type changed from {wt} to {rt}")
            return
        if w.get("logicalType") != r.get("logicalType"):
            self.problems.append(
                f"{path}: logicalType changed {w.get('logicalType')} -> {r.get('logicalType')}"
            )
        if wt in _NAMED:
            key = (_full_name(w, wns), _full_name(r, rns))
            if key in self._seen:
                return
            self._seen.add(key)
            if key[0] != key[1] and key[0] not in {
                _full_name({"name": a}, rns) for a in r.get("aliases", [])
            }:
                self.problems.append(f"{path}: named type renamed {key[0]} -> {key[1]} without alias")
        if wt == "record":
            self._record(w, r, path, wns, rns)
        elif wt == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                self.problems.append(f"{path}: enum symbols removed {missing} and reader enum has no default")
        elif wt == "fixed" and w["size"] != r["size"]:
            self.problems.append(f"{path}: fixed size changed {w['size']} -> {r['size']}")
        elif wt == "array":
            self.check(w["items"], r["items"], f"{path}[]", wns, rns)
        elif wt == "map":
            self.check(w["values"], r["values"], f"{path}{{}}", wns, rns)

    def _record(
        self, w: dict[str, Any], r: dict[str, Any], path: str, wns: str | None, rns: str | None
    ) -> None:
        wfields = {f["name"]: f for f in w["fields"]}
        rnames: set[str] = set()
        for rf in r["fields"]:
            names = [rf["name"], *rf.get("aliases", [])]
            rnames.update(names)
            wf = next((wfields[n] for n in names if n in wfields), None)
            fpath = f"{path}.{rf['name']}"
            if wf is None:
                if "default" not in rf:
                    self.problems.append(f"{fpath}: added without a default")
            else:
                self.check(wf["type"], rf["type"], fpath, wns, rns)
        for name, wf in wfields.items():
            if name not in rnames and "default" not in wf:
                self.problems.append(f"{path}.{name}: removed but had no default")

    def _matches(self, wb: Any, rb: Any, wns: str | None, rns: str | None) -> bool:
        """Whether union branch ``rb`` is the one Avro resolution picks for writer branch ``wb``."""
        w, wns2 = self._norm(wb, wns, self.writer_names)
        r, rns2 = self._norm(rb, rns, self.reader_names)
        if isinstance(w, list) or isinstance(r, list):
            return False
        if w["type"] != r["type"]:
            return r["type"] in _PROMOTIONS.get(w["type"], set())
        if w["type"] in _NAMED:
            return w["name"].rpartition(".")[2] == r["name"].rpartition(".")[2]
        return True

    def _tname(self, schema: Any, ns: str | None) -> str:
        s, _ = self._norm(schema, ns, self.writer_names)
        return str(s if isinstance(s, list) else s.get("name", s["type"]))


def backward_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why ``new`` (reader) cannot safely evolve from ``old`` (writer); empty when it can.

    Takes raw schema dicts as written in ``.avsc`` files, not fastavro-parsed ones.
    """
    walker = _Walker()
    walker.check(old, new, new.get("name", "<root>"))
    return walker.problems
