"""Bad input in a Prefect run reads like in plain mode (issue 15, class 8): one paragraph, no
traceback on the console, never retried; Prefect's own ERROR records, with the traceback, go
to a log file the paragraph names."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.mark.slow
@pytest.mark.e2e
def test_input_error_in_a_prefect_run_is_one_paragraph(eoforge_cli: Cli, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stac:\n  bbox: [0.0, 0.0, 0.5, 0.5]\n")  # a search that finds nothing
    proc = eoforge_cli(
        "run", "--config", str(cfg), "--out", str(tmp_path / "out"),
        "--store", str(tmp_path / "store"), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "| ERROR" not in proc.stderr, proc.stderr[-3000:]
    assert "Retrying" not in proc.stderr  # bad input is never retried
    assert "error (InputError):" in proc.stderr and "returned no items" in proc.stderr
    found = re.search(r"with the traceback: (\S+\.log)", proc.stderr)
    assert found, proc.stderr[-2000:]
    log = Path(found[1]).read_text()
    assert "Traceback" in log and "InputError" in log
    assert not (tmp_path / "out").exists()
