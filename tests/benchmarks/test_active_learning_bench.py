"""Smoke run of ``python -m benchmarks.active_learning`` at a tiny size on the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "src" / "eoforge" / "stac" / "sample" / "s2-l2a-mini"


@pytest.mark.slow
def test_active_learning_benchmark_tiny(tmp_path: Path) -> None:
    out, png = tmp_path / "al.json", tmp_path / "al.png"
    cmd = [
        sys.executable, "-m", "benchmarks.active_learning", "--json", str(out), "--png", str(png),
        "--catalog", str(MINI), "--rounds", "2", "--batch", "5", "--seeds", "0", "1",
        "--pool", "3000", "--test-pixels", "5000", "--in-domain-pixels", "2000", "--trees", "10",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["strategies"]) == {
        "random", "uncertainty", "uncertainty+spread", "uncertainty+clusters", "uncertainty+random"
    }  # fmt: skip
    start = 3 * len(result["classes"])
    for name, strategy in result["strategies"].items():
        assert len(strategy["runs"]) == 2, name
        for run in strategy["runs"]:
            assert [p["labels"] for p in run["curve"]] == [start, start + 5, start + 10], name
            assert all(0 <= p["miou"] <= 1 for p in run["curve"])
            assert all(0 <= p["miou_in_domain"] <= 1 for p in run["curve"])
            assert len(run["curve"][-1]["per_class_iou"]) == len(result["classes"])
    assert result["random_final_labels"] == start + 10
    ratio = result["ratios"]["labels_to_match_random"]
    assert ratio is None or 0 < ratio <= 1
    assert set(result["ratios"]["in_domain_per_strategy"]) == set(result["strategies"]) - {"random"}
    assert isinstance(result["machine"]["load_avg"], float)
    assert png.stat().st_size > 10_000
