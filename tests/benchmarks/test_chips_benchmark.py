"""Smoke run of ``python -m benchmarks.chips`` at a tiny size (the real one runs on the full sample)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eoforge.config import BUNDLED_CATALOG

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_chips_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "chips.json"
    # no --catalog: the default is the data the repository ships (not ../shared beside it)
    cmd = [
        sys.executable, "-m", "benchmarks.chips", "--json", str(out),
        "--repeats", "1", "--lazy-batches", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Chip generation" in proc.stdout and "Training loader" in proc.stdout
    summary = json.loads(out.read_text())
    ratios = summary["ratios"]
    assert set(ratios) >= {"chips_vs_xbatcher", "loader_vs_rasterio_windows"}
    assert all(v > 0 for v in ratios.values())
    assert summary["generation"]["same_chips"] and summary["loader"]["same_samples"]
    assert summary["sample"] == {
        "catalog": str(BUNDLED_CATALOG),
        "bundled": True,
        "items": 10,
        "pixels_per_asset": [512, 512],
    }
