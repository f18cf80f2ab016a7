"""A real `prefect server start` and real `prefect worker start` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrefectServer:
    api: str
    env: dict[str, str]
    home: Path

    def request(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            self.api + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def run_deployment_like_the_ui(self, name: str, parameters: dict[str, Any]) -> str:
        """What the UI's 'Run' button does: create a flow run from the deployment by id."""
        dep = self.request("GET", f"/deployments/name/{name}")
        run = self.request(
            "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters}
        )
        return str(run["id"])

    def wait(self, flow_run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.request("GET", f"/flow_runs/{flow_run_id}")
            if fr["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return dict(fr)
            time.sleep(2)
        raise TimeoutError(f"flow run {flow_run_id} did not finish in {timeout} s")

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}}
        return list(self.request("POST", "/task_runs/filter", body))


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_LOGGING_LEVEL="INFO",
        EOFORGE_STORE=str(home / "store"),
    )
    proc = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        home / "server.log",
    )
    server = PrefectServer(api=f"http://127.0.0.1:{port}/api", env=env, home=home)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            server.request("GET", "/health")
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((home / "server.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    else:
        _stop(proc)
        raise RuntimeError("prefect server did not become healthy in 120 s")
    yield server
    _stop(proc)


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """`eoforge deploy` against the real server: pools cpu + gpu and every deployment."""
    proc = subprocess.run(
        [str(BIN / "eoforge"), "deploy"],
        env=prefect_server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return prefect_server


@pytest.fixture(scope="session")
def workers(deployed: PrefectServer) -> Iterator[dict[str, Path]]:
    """One real process worker per pool; yields their log files."""
    logs = {pool: deployed.home / f"worker-{pool}.log" for pool in ("cpu", "gpu")}
    procs = [
        _start(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
            deployed.env,
            log,
        )
        for pool, log in logs.items()
    ]
    yield logs
    for p in procs:
        _stop(p)
