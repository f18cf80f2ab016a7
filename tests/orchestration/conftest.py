"""A real `prefect server start` and real `prefect worker start` processes on loopback."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eoforge.testing import (
    eoforge_deploy,
    launch_prefect_server,
    rest_call,
    start_process,
    stop_process,
)
from eoforge.testing import prefect_server as services

BIN = Path(sys.executable).parent
_FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class PrefectServer(services.PrefectServer):
    """:class:`eoforge.testing.PrefectServer` whose error statuses stay
    ``urllib.error.HTTPError`` (the event tests rely on them)."""

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """:func:`eoforge.testing.rest_call` (503/429 and timeouts retried)."""
        return rest_call(self.api, method, path, body)

    def run_deployment_like_the_ui(self, name: str, parameters: dict[str, Any]) -> str:
        """What the UI's 'Run' button does: create a flow run from the deployment by id."""
        return self.run(name, parameters)

    def wait(self, flow_run_id: str, timeout: float = 900, poll_s: float = 2.0) -> dict[str, Any]:
        return super().wait(flow_run_id, timeout, poll_s)

    def task_runs(self, flow_run_id: str, settle_s: float = 60.0) -> list[dict[str, Any]]:
        """The flow run's task runs, once each has a final state.

        The server writes task-run states from the events a run sends, which may land after the
        flow run's own final state: a CI rehearsal read a lineage task run with no state yet.
        Polls until every task run is final, or ``settle_s`` passes (then returns what it has).
        """
        body = {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}}
        deadline = time.monotonic() + settle_s
        while True:
            runs = list(self.request("POST", "/task_runs/filter", body))
            settled = all((tr.get("state") or {}).get("type") in _FINAL for tr in runs)
            if settled or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


_SERVER_HOMES: list[Path] = []
LOG_TAIL_CHARS = 6000


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing orchestration test carries the tails of the server's and workers' logs, so a
    CI failure shows what the server was doing (locked database, slow services, crashes)."""
    report = yield
    if report.failed:
        for home in _SERVER_HOMES:
            for log in sorted(home.glob("*.log")):
                text = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
                report.sections.append((f"{log.name} (last {LOG_TAIL_CHARS} chars)", text))
    return report


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect")
    _SERVER_HOMES.append(home)
    api, env, proc = launch_prefect_server(home, env={"EOFORGE_STORE": str(home / "store")})
    yield PrefectServer(api=api, env=env, home=home)
    stop_process(proc)


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """`eoforge deploy` against the real server: pools cpu + gpu and every deployment."""
    eoforge_deploy(prefect_server.env, timeout=300)
    return prefect_server


@pytest.fixture(scope="session")
def workers(deployed: PrefectServer) -> Iterator[dict[str, Path]]:
    """One real process worker per pool; yields their log files."""
    logs = {pool: deployed.home / f"worker-{pool}.log" for pool in ("cpu", "gpu")}
    procs = [
        start_process(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
            deployed.env,
            log,
        )
        for pool, log in logs.items()
    ]
    yield logs
    for p in procs:
        stop_process(p)
