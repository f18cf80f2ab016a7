"""Tests of what importing eoforge sets for the process: ONNX Runtime's telemetry is off
and MLflow's telemetry is off unless the user asked for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import os
import eoforge  # before onnxruntime, as every eoforge entry point imports it
import onnxruntime
from mlflow.telemetry.utils import is_telemetry_disabled
assert is_telemetry_disabled()
print(os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


def _probe(home: Path, **env: str) -> str:
    drop = ("CI", "ORT_DISABLE_TELEMETRY", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    base = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-1]


def test_onnxruntime_and_mlflow_telemetry_are_off(tmp_path: Path) -> None:
    assert _probe(tmp_path) == "1"
    assert not (tmp_path / ".cache" / "Microsoft").exists()  # its device id and event store


def test_a_users_own_setting_is_kept(tmp_path: Path) -> None:
    assert _probe(tmp_path, ORT_DISABLE_TELEMETRY="0") == "0"
