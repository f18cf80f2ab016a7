"""Smoke run of ``python -m benchmarks.overlap`` on a random-weight model at a tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.inference import build_random_model, read_scene

ROOT = Path(__file__).resolve().parents[2]


def test_overlap_benchmark_tiny(tmp_path: Path) -> None:
    scene = read_scene(64)
    build_random_model(tmp_path / "model", scene, 4, scene[None].astype(np.float32))
    out = tmp_path / "overlap.json"
    cmd = [
        sys.executable, "-m", "benchmarks.overlap", "--model-dir", str(tmp_path / "model"),
        "--json", str(out), "--window", "128", "--overlaps", "0,32", "--speed-window", "64",
        "--strip-width", "256", "--repeats", "1", "--threads", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    by_tile = result["seams"]["by_tile"]
    assert set(by_tile) == {"33TWL", "33TWM"}
    for tile in by_tile.values():
        assert len(tile["items"]) == 5 and tile["valid_pixels"] > 0
        # no overlap leaves seams a blended one hides at least partly
        share = {o: tile[o]["share_differing_from_seamless"] for o in ("0", "32")}
        assert share["0"] > 0 and share["32"] <= share["0"]
    speed = result["speed"]["by_overlap"]
    # the 64 px timing window: ceil((10980 - 64) / stride) + 1 per axis
    assert speed["0"]["windows_on_10980_tile"] == 172**2
    assert speed["32"]["windows_on_10980_tile"] == 343**2
    assert all(v["mpx_per_s"] > 0 for v in speed.values())


def test_overlap_benchmark_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "benchmarks.overlap", "--model-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no model.onnx" in proc.stderr and "make demo" in proc.stderr
