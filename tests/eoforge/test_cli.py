"""The command line's own behaviour: version, help that teaches, stage selection errors.

Runs of the pipeline through the command line are in tests/e2e/test_demo.py.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eoforge.cli import app
from eoforge.runs.pipeline import STAGES, plan_stages

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"eoforge {version('eoforge')}"


@pytest.mark.parametrize("command", ["demo", "run", "report", "watch", "suggest", "label"])
def test_help_teaches_with_examples(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"eoforge {command}" in result.stdout


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    for command in ("demo", "run", "report", "watch", "deploy", "reap-zombies", "suggest", "label"):
        assert command in result.stdout


def test_unknown_stage_is_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--plain", "--stages", "ingest,chipz", "--out", str(out)])
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "['chipz']" in said and "choose from search, ingest, chips" in said
    assert not out.exists()


def test_report_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "not a finished eoforge run folder" in said


def test_plan_stages_adds_what_the_stages_need() -> None:
    assert plan_stages(None) == STAGES
    assert plan_stages(["chips", "ingest"]) == ("search", "ingest", "chips")
    assert plan_stages(["evaluate"]) == (
        "search",
        "ingest",
        "chips",
        "train",
        "baseline",
        "infer",
        "evaluate",
    )
