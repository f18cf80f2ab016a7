"""The temporary Prefect server of local runs: a first start has time, a failed one says what
to do (:mod:`eoforge.orchestration.local_server`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eoforge.errors import TransientError
from eoforge.orchestration.local_server import (
    LOCAL_DEFAULTS,
    STARTUP_TIMEOUT_VAR,
    apply_local_defaults,
    server_start_error,
)

#: Prefect 3.8's message when its temporary server does not answer in time.
PREFECT_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server."


def test_defaults_fill_only_what_the_user_left_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STARTUP_TIMEOUT_VAR, raising=False)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # the user opted in
    apply_local_defaults()
    assert os.environ[STARTUP_TIMEOUT_VAR] == LOCAL_DEFAULTS[STARTUP_TIMEOUT_VAR]
    assert int(os.environ[STARTUP_TIMEOUT_VAR]) >= 60  # a first start took 18-20 s idle
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


def test_only_prefects_start_failure_is_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STARTUP_TIMEOUT_VAR, "45")
    err = server_start_error(RuntimeError(PREFECT_TIMEOUT + " stdout: ..."))
    assert isinstance(err, TransientError)
    assert "45 s" in str(err) and STARTUP_TIMEOUT_VAR in str(err) and "--plain" in str(err)
    assert server_start_error(RuntimeError("a bug somewhere")) is None
    assert server_start_error(ValueError(PREFECT_TIMEOUT)) is None


def test_command_line_sets_the_defaults_before_prefect_reads_them(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_DEFAULTS}
    code = (
        "import eoforge.cli\n"
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as t\n"
        "print(t.value())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == LOCAL_DEFAULTS[STARTUP_TIMEOUT_VAR]


@pytest.mark.e2e
def test_server_that_does_not_start_is_a_clear_retryable_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / ".prefect-home"),
        EOFORGE_STORE=str(tmp_path / "store"),
        MLFLOW_TRACKING_URI="",
        **{STARTUP_TIMEOUT_VAR: "0"},  # Prefect gives up at once
    )
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "eoforge.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "error (TransientError)" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists()
