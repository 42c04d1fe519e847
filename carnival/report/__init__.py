"""The demo's self-checking report: this run's rows in ClickHouse against the simulator's ground truth.

``queries`` holds every SQL statement; ``truth`` loads truth.jsonl; one pure module per section
(``power``, ``tasks``, ``ledger``, ``spillover``, ``alerts``) turns rows into lines and PASS/FAIL checks;
``build`` glues them; ``render`` prints them.
"""

from carnival.report.build import build_sections
from carnival.report.model import Check, Section
from carnival.report.render import render
from carnival.report.truth import GroundTruth, load_truth

__all__ = ["Check", "GroundTruth", "Section", "build_sections", "load_truth", "render"]
