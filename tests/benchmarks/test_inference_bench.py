"""Smoke run of ``python -m benchmarks.inference`` at a tiny size (the real one takes minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_inference_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    cmd = [
        sys.executable, "-m", "benchmarks.inference", "--json", str(out),
        "--threads", "1", "--repeats", "1", "--window", "32", "--batch", "2",
        "--base-channels", "4", "--scene-size", "96", "--large-size", "160",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio ort_vs_torch" in proc.stdout
    result = json.loads(out.read_text())
    assert result["ratios"]["ort_vs_torch"] > 0
    assert set(result["mpx_per_s_per_core"]) >= {"real_scene", "large_tiled", "windows_ort"}
    assert result["parity"]["ort_vs_torch_max_abs_diff"] < 1e-3
    assert result["parity"]["export_max_abs_diff"] < 1e-3
    assert result["memory"]["large_scene_px"] == [160, 160]
    assert result["machine"]["threads_used"] == 1
    gpu = result["gpu"]
    assert gpu["measured"] or gpu["missing"], "GPU numbers are either measured or listed missing"
