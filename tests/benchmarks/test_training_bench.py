"""Smoke run of ``python -m benchmarks.training`` at a tiny size on the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_training_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    cmd = [
        sys.executable, "-m", "benchmarks.training", "--json", str(out),
        "--epochs", "1", "--base-channels", "4", "--batch", "32", "--repeats", "1",
        "--preset", "full",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    cpu = result["steps"]["cpu_fp32"]
    assert cpu["device"] == "cpu" and cpu["amp_dtype"] is None
    assert cpu["steps"] >= 1 and cpu["steps_per_s"] > 0
    assert result["reads"]["routes"]["cpu"]["mb_per_s"] > 0
    assert result["reads"]["train_split_mb"] > 0
    if result["machine"]["cuda_devices"] == 0:
        # without a GPU every GPU number is listed as missing, never silently absent
        assert any("cuda_amp" in m for m in result["missing"])
        assert any("kvikio" in m for m in result["missing"])
        assert any("full_preset_on_gpu" in m for m in result["missing"])
    assert "steps/s" in proc.stdout
