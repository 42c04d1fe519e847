"""The chaos suite's fixture: one chaos run per module (a few minutes), shared by every check of it.

``CARNIVAL_CHAOS_SCALE=short`` (default, CI) or ``full`` (`make chaos`); see chaos_scale.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The helpers of this directory and tests/integration/worker_process.py, imported by their names.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from chaos_checks import Outcome, all_checks, render  # noqa: E402
from chaos_run import RunResult, Scenario  # noqa: E402
from chaos_scale import current  # noqa: E402


@pytest.fixture(scope="module")
def chaos_run(stack, stack_env, tmp_path_factory, request) -> tuple[RunResult, list[Outcome]]:  # type: ignore[no-untyped-def]
    from sinks.migrate import migrate

    migrate(stack)
    workdir = tmp_path_factory.mktemp("chaos")
    result = Scenario(stack, stack_env, workdir, current()).run()
    outcomes = all_checks(stack, result)
    known = getattr(request.module, "KNOWN_DEFECTS", {})
    table = render(result, outcomes, known)
    (workdir / "chaos-table.txt").write_text(table)
    print("\n" + table + f"\n(logs and table in {workdir})", flush=True)
    return result, outcomes
