"""Smoke run of ``python -m benchmarks.embeddings`` at a tiny size on the bundled mini sample
(the real one runs on the full sample)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eoforge.config import BUNDLED_CATALOG

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embeddings_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "embeddings.json"
    cmd = [
        sys.executable, "-m", "benchmarks.embeddings", "--json", str(out),
        "--catalog", str(BUNDLED_CATALOG), "--shots", "10", "--seeds", "1", "--epochs", "1",
        "--pixels", "5000",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    row = summary["fewshot"]["10"]
    for key in ("embeddings_knn_miou", "embeddings_linear_miou", "rf_bands_miou"):
        assert 0 < row[key] <= 1 and row[f"{key}_std"] == 0
    assert set(summary["kmeans"]) >= {"ami_embeddings", "ami_bands"}
    assert summary["throughput"]["embedding_mpx_s"] > 0
    assert summary["throughput"]["onnx_parity"] == {"knn": 1.0, "linear": 1.0}
    assert summary["machine"]["load_avg_before"] and summary["machine"]["peak_rss_mb"] > 0
