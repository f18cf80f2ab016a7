"""Smoke run of ``python -m benchmarks.inference`` at a tiny size (the real one takes minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 30 s on an idle machine: it quantizes and measures conv rates too
def test_inference_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    cmd = [
        sys.executable, "-m", "benchmarks.inference", "--json", str(out),
        "--threads", "1", "--repeats", "1", "--window", "32", "--overlap", "8", "--batch", "2",
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
    limits = result["limits"]  # FLOPs counted by torch, conv rate measured here
    assert limits["flop_per_output_px"] > 0 and limits["achievable_conv_gflop_per_s"] > 0
    assert limits["mpx_per_s"] == pytest.approx(
        limits["achievable_conv_gflop_per_s"] * 1e3 / limits["flop_per_output_px"]
    )
    assert result["ratios"]["whole_scene_vs_limit"] > 0
    by_level = limits["flop_per_output_px_by_level"]  # the same FLOPs, split by UNet level
    assert sum(by_level.values()) == pytest.approx(limits["flop_per_output_px"], rel=1e-6)
    assert set(by_level) == {"0", "1", "2", "3"}
    # no level runs faster than the best shape: the level-by-level limit is the lower one
    assert 0 < limits["mpx_per_s_by_level"] <= limits["mpx_per_s"] * (1 + 1e-9)
    assert result["ratios"]["whole_scene_vs_limit_by_level"] >= result["ratios"][
        "whole_scene_vs_limit"
    ] * (1 - 1e-9)
    assert result["parity"]["scene_class_map_agreement_vs_trained_graph"] > 0.99
    assert result["config"]["uses_product_defaults"] is False  # tiny windows and width
    assert result["config"]["product_defaults"]["spectral_indices"] is True
    int8 = result["int8"]
    assert int8["quantization"]["format"] == "QDQ" and result["ratios"]["int8_vs_fp32"] > 0
    assert 0.5 < int8["accuracy"]["class_map_agreement_int8_vs_fp32"] <= 1
    assert result["accuracy"]["int8_miou_drop"] is None, "random weights: no accuracy claimed"
    gpu = result["gpu"]
    assert gpu["measured"] or gpu["missing"], "GPU numbers are either measured or listed missing"
