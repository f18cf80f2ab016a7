"""Tests of eoforge.inference.no_telemetry: importing OpenVINO through eoforge forks no
telemetry sender and writes nothing under the user's home, unless the user opted in."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not importorskip: importing openvino here would send its telemetry from pytest
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None
    or importlib.util.find_spec("openvino_telemetry") is None,
    reason="openvino (with its telemetry package) is not installed",
)

#: Counts the processes forked while OpenVINO is imported and its telemetry thread would send.
PROBE = """
import os, sys, time
forks = []
os.register_at_fork(before=lambda: forks.append(1))
if sys.argv[1] == "eoforge":
    from eoforge.inference.openvino_session import openvino_available
    assert openvino_available()
import openvino
time.sleep(2.0)  # the sender is a thread pool's task
print(len(forks))
"""


def _probe(how: str, home: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_openvino_through_eoforge_sends_nothing_and_writes_nothing_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert _probe("eoforge", home) == 0
    assert not (home / "intel").exists()  # no client id, counter or consent file


def test_an_explicit_opt_in_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    from eoforge.inference.no_telemetry import decline_openvino_telemetry

    monkeypatch.setattr(OptInChecker, "check", OptInChecker.check)  # undone after the test
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("CI", "TF_BUILD", "JENKINS_URL"):
        monkeypatch.delenv(name, raising=False)
    decline_openvino_telemetry()
    decline_openvino_telemetry()  # once is enough: no second wrapper
    assert OptInChecker().check(False, True) == ConsentCheckResult.DECLINED  # no file
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "openvino_telemetry").write_text("1")  # `opt_in_out --opt_in`
    assert OptInChecker().check(False, True) == ConsentCheckResult.ACCEPTED
    (tmp_path / "intel" / "openvino_telemetry").write_text("0")
    assert OptInChecker().check(False, True) == ConsentCheckResult.DECLINED
