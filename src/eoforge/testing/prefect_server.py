"""A real Prefect server for tests and benchmarks: ``prefect server start`` on loopback with its
own SQLite database, ``eoforge deploy`` against it, and process workers per work pool.

Plain functions with explicit start/stop, so a benchmark can time around them; the
orchestration tests' fixtures start their services with them too. Nothing here imports
Prefect: the server, the deploy and the workers are separate processes driven over REST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eoforge.errors import InputError, TransientError
from eoforge.testing.processes import BIN, free_port, start_process, stop_process

__all__ = [
    "FINAL_STATES",
    "REQUEST_TIMEOUT_S",
    "PrefectServer",
    "eoforge_deploy",
    "launch_prefect_server",
    "prefect_services",
    "rest_call",
    "start_prefect_server",
]

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

REQUEST_TIMEOUT_S = 90.0
"""Longer than the Prefect server's own SQLite ``busy_timeout`` (60 s): a request queued behind
a locked database answers late rather than never."""


def rest_call(api: str, method: str, path: str, body: Any = None, attempts: int = 6) -> Any:
    """One Prefect REST call, JSON in and out.

    Retried with exponential backoff, as Prefect's own client and the UI do:
    - 503 and 429: the server answers 503 when SQLite is locked by concurrent writers (worker
      heartbeats, task states) and the transaction was rolled back;
    - no answer within :data:`REQUEST_TIMEOUT_S`, or a dropped connection: a server starved of
      CPU or queued behind a long write. Every call the tests make is safe to repeat (reads,
      filters, PATCHes, and creations that carry an idempotency key).
    Any other error status (or the last failure) raises: ``urllib.error.HTTPError`` for a
    status, ``TimeoutError``/``OSError`` for no answer.
    """
    for attempt in range(attempts):
        req = urllib.request.Request(
            api + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                raw = resp.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code not in (429, 503) or attempt == attempts - 1:
                raise
        except (TimeoutError, ConnectionError, urllib.error.URLError):
            if attempt == attempts - 1:
                raise
        time.sleep(min(2**attempt, 10))
    raise AssertionError("unreachable")


@dataclass
class PrefectServer:
    """A running ``prefect server start`` and the environment that points clients at it."""

    api: str
    env: dict[str, str]
    home: Path
    _deployment_ids: dict[str, str] = field(default_factory=dict, repr=False)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call (:func:`rest_call`); an error status becomes an InputError."""
        try:
            return rest_call(self.api, method, path, body)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise InputError(f"Prefect API {method} {path} -> {exc.code}: {detail}") from exc

    def deployment_id(self, name: str) -> str:
        if name not in self._deployment_ids:
            self._deployment_ids[name] = str(self.request("GET", f"/deployments/name/{name}")["id"])
        return self._deployment_ids[name]

    def set_parameters(self, name: str, parameters: dict[str, Any]) -> None:
        """Replace a deployment's default parameters (what scheduled and triggered runs get)."""
        self.request(
            "PATCH", f"/deployments/{self.deployment_id(name)}", {"parameters": parameters}
        )

    def update_schedules(self, name: str, **update: Any) -> None:
        """Patch every schedule of a deployment, e.g. ``active=False`` or ``schedule={...}``."""
        dep_id = self.deployment_id(name)
        for sched in self.request("GET", f"/deployments/{dep_id}")["schedules"]:
            self.request("PATCH", f"/deployments/{dep_id}/schedules/{sched['id']}", update)

    def run(self, name: str, parameters: dict[str, Any] | None = None) -> str:
        """Create a flow run of a deployment, as the UI's 'Run' button does (the idempotency key
        makes a retried request create one run)."""
        run = self.request(
            "POST",
            f"/deployments/{self.deployment_id(name)}/create_flow_run",
            {"parameters": parameters or {}, "idempotency_key": uuid.uuid4().hex},
        )
        return str(run["id"])

    def flow_runs(self, name: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"deployment_id": {"any_": [self.deployment_id(name)]}}, "limit": 200}
        return list(self.request("POST", "/flow_runs/filter", body))

    def wait(self, flow_run_id: str, timeout: float = 600, poll_s: float = 1.0) -> dict[str, Any]:
        """The flow run once it reached a final state, polled every ``poll_s`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.request("GET", f"/flow_runs/{flow_run_id}")
            if fr["state"]["type"] in FINAL_STATES:
                return dict(fr)
            time.sleep(poll_s)
        raise TransientError(f"flow run {flow_run_id} did not finish in {timeout} s")


def launch_prefect_server(
    home: Path, startup_timeout: float = 120, env: Mapping[str, str] | None = None
) -> tuple[str, dict[str, str], subprocess.Popen[bytes]]:
    """``prefect server start`` on a free loopback port with its own SQLite database, once
    ``/health`` answers: its API URL, the environment that points clients at it (``env`` added)
    and the process (stop it with :func:`stop_process`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = dict(os.environ)
    server_env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=api,
        PREFECT_LOGGING_LEVEL="INFO",
        # deployments' default run folders (`eoforge deploy`): beside this server's files
        EOFORGE_RUNS=str(home / "runs"),
    )
    server_env.update(env or {})
    proc = start_process(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
        home / "server.log",
    )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=30):
                return api, server_env, proc
        except OSError:
            if proc.poll() is not None:
                raise TransientError(
                    f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}"
                ) from None
            time.sleep(0.5)
    stop_process(proc)
    raise TransientError(f"prefect server did not become healthy in {startup_timeout} s")


def start_prefect_server(home: Path, startup_timeout: float = 120) -> tuple[PrefectServer, Any]:
    """:func:`launch_prefect_server`, as a :class:`PrefectServer` and its process."""
    api, env, proc = launch_prefect_server(home, startup_timeout)
    return PrefectServer(api=api, env=env, home=home), proc


def eoforge_deploy(env: Mapping[str, str], timeout: float = 600) -> None:
    """``eoforge deploy`` against the server ``env`` points at (work pools cpu + gpu, every
    deployment)."""
    proc = subprocess.run(
        [str(BIN / "eoforge"), "deploy"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise InputError(f"eoforge deploy failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


@contextmanager
def prefect_services(
    home: Path,
    pools: tuple[str, ...] = ("cpu",),
    env: Mapping[str, str] | None = None,
    warm_engine: bool = False,
) -> Iterator[PrefectServer]:
    """A Prefect server with the eoforge deployments applied and one process worker per pool.

    ``env`` is added to the server's (and so the workers' and flow runs') environment. With
    ``warm_engine`` each worker gets a warm engine beside it
    (:mod:`eoforge.orchestration.warm_engine`), started with the worker's environment.
    """
    server, server_proc = start_prefect_server(home)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        server.env.update(env or {})
        eoforge_deploy(server.env)
        for pool in pools:
            worker_env = dict(server.env)
            if warm_engine:
                sock = home / f"warm-engine-{pool}.sock"
                worker_env["EOFORGE_WARM_ENGINE"] = str(sock)
                workers.append(
                    start_process(
                        [sys.executable, "-m", "eoforge.orchestration.warm_engine", "serve"],
                        worker_env,
                        home / f"warm-engine-{pool}.log",
                    )
                )
                deadline = time.monotonic() + 120
                while not sock.exists():
                    if time.monotonic() > deadline or workers[-1].poll() is not None:
                        raise TransientError(
                            f"the warm engine did not start; see {home}/warm-engine-{pool}.log"
                        )
                    time.sleep(0.2)
            workers.append(
                start_process(
                    [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                    worker_env,
                    home / f"worker-{pool}.log",
                )
            )
        yield server
    finally:
        for w in workers:
            stop_process(w)
        stop_process(server_proc)
