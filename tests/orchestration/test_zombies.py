"""Crashed flow runs: a SIGKILLed flow stays RUNNING in Prefect; eoforge's reaper marks it CRASHED.

Against a real ``prefect server start`` (session fixture of ``conftest.py``): a real flow runs in
a subprocess, is killed with SIGKILL, is shown to stay RUNNING, and is then found by its dead
run lock or its stale heartbeats and marked CRASHED over the REST API. Live runs are left alone.
Only this test's own flow runs are inspected (``flow_run_ids``), so other tests' runs on the
shared server are never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eoforge.ops.zombies import find_zombies, read_locks, reap_zombies

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

FLOW = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefect import flow
    from prefect.runtime import flow_run
    from eoforge.ops.zombies import RunLock

    @flow(name="eoforge-zombie-probe")
    def probe(lock_dir: str, marker: str, use_lock: bool) -> None:
        run_id = str(flow_run.id)
        if use_lock:
            with RunLock(Path(lock_dir), run_id, interval_s=1):
                Path(marker).write_text(run_id)
                time.sleep(600)
        else:
            Path(marker).write_text(run_id)
            time.sleep(600)

    probe(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
    """
)


def _start_flow(
    server: Any, tmp: Path, use_lock: bool, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    script = tmp / "probe_flow.py"
    script.write_text(FLOW)
    marker = tmp / f"{name}.started"
    env = dict(server.env, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp / "runs"), str(marker), "1" if use_lock else "0"],
        env=env,
        stdout=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp / f"{name}.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, marker.read_text()


def _state(server: Any, run_id: str) -> str:
    return str(server.request("GET", f"/flow_runs/{run_id}")["state"]["type"])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _wait_heartbeat(server: Any, run_id: str, timeout: float = 30) -> None:
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        },
        "limit": 1,
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.request("POST", "/events/filter", body)["events"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"no heartbeat event for flow run {run_id} within {timeout} s")


def test_killed_run_with_a_run_lock_is_marked_crashed(prefect_server: Any, tmp_path: Path) -> None:
    proc, run_id = _start_flow(prefect_server, tmp_path, use_lock=True, name="locked")
    locks = tmp_path / "runs"
    try:
        assert _state(prefect_server, run_id) == "RUNNING"
        # alive: its lock names a live process, whatever the thresholds
        assert (
            find_zombies(
                prefect_server.api, stale_after_s=0, lock_dirs=[locks], flow_run_ids=[run_id]
            )
            == []
        )
    finally:
        _kill(proc)
    time.sleep(2)
    assert _state(prefect_server, run_id) == "RUNNING", "Prefect noticed the kill by itself?"
    assert run_id in read_locks([locks])
    reaped = reap_zombies(prefect_server.api, lock_dirs=[locks], flow_run_ids=[run_id])
    assert [z.flow_run_id for z in reaped] == [run_id]
    assert "is gone" in reaped[0].reason
    run = prefect_server.request("GET", f"/flow_runs/{run_id}")
    assert run["state"]["type"] == "CRASHED"
    assert "marked crashed" in run["state"]["message"]
    assert read_locks([locks]) == {}


def test_killed_run_with_stale_heartbeats_is_marked_crashed(
    prefect_server: Any, tmp_path: Path
) -> None:
    proc, run_id = _start_flow(prefect_server, tmp_path, use_lock=False, name="beating")
    try:
        _wait_heartbeat(prefect_server, run_id)
        assert find_zombies(prefect_server.api, stale_after_s=90, flow_run_ids=[run_id]) == []
    finally:
        _kill(proc)
    assert _state(prefect_server, run_id) == "RUNNING"
    # two minutes later (simulated) the last heartbeat is older than 3x its 30 s interval
    later = datetime.now(UTC) + timedelta(seconds=120)
    reaped = reap_zombies(prefect_server.api, stale_after_s=90, flow_run_ids=[run_id], now=later)
    assert [z.flow_run_id for z in reaped] == [run_id]
    assert "no heartbeat" in reaped[0].reason
    assert _state(prefect_server, run_id) == "CRASHED"


def test_run_without_evidence_needs_silent_after(prefect_server: Any) -> None:
    flow = prefect_server.request("POST", "/flows/", {"name": "eoforge-zombie-rest"})
    run = prefect_server.request(
        "POST",
        "/flow_runs/",
        {"flow_id": flow["id"], "state": {"type": "RUNNING", "name": "Running"}},
    )
    run_id = str(run["id"])
    assert _state(prefect_server, run_id) == "RUNNING"
    assert reap_zombies(prefect_server.api, stale_after_s=0, flow_run_ids=[run_id]) == []
    assert _state(prefect_server, run_id) == "RUNNING"
    found = reap_zombies(
        prefect_server.api, stale_after_s=0, silent_after_s=0, flow_run_ids=[run_id]
    )
    assert [z.flow_run_id for z in found] == [run_id]
    assert _state(prefect_server, run_id) == "CRASHED"
