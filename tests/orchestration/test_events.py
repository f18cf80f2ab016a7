"""Event-driven reprocessing end to end: STAC items land, the watcher emits one event per item,
the infer deployment's trigger predicts exactly those items, and reprocessing is idempotent.

Real services on loopback: ``prefect server start``, ``eoforge deploy``, process workers (the
session fixtures of ``conftest.py``) and ``rustac serve`` on a fixed port, restarted with more
items to make the last two dates land.

Isolation from the rest of the session (``test_deployments.py`` may run before, on the same
server): the deployments' schedules are switched off and their parameters patched for the
duration of the test (and restored afterwards), and the test uses its own store and output
folder. Its own store matters: from ``eoforge deploy`` on, the watch deployment's schedule runs
with the default parameters (the bundled catalog, the server's ``EOFORGE_STORE``), recording
every item in that store's cursor, so a shared cursor would depend on what ran before.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import BUNDLED_CATALOG
from eoforge.io.atomic import write_json_atomic
from eoforge.runs.store import PRODUCTION_POINTER
from eoforge.stac.server import LocalStacServer, prepare_served_catalog
from eoforge.stac.watch import EVENT_NAME, event_id

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

COLLECTION = "sentinel-2-l2a"
FIRST_DATES = ("2023-08-10", "2023-08-13", "2023-08-15")
NEW_ITEMS = {
    "S2A_33TWL_20230818_0_L2A",
    "S2A_33TWM_20230818_0_L2A",
    "S2B_33TWL_20230820_0_L2A",
    "S2B_33TWM_20230820_0_L2A",
}
SPEC = {
    "train": {"max_seconds": 15, "max_epochs": 2, "rf_n_estimators": 10, "rf_train_pixels": 20000}
}
DEPLOYMENTS = ("eoforge-pipeline/pipeline", "eoforge-watch/watch", "eoforge-infer/infer")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _early(item: dict[str, Any]) -> bool:
    return str(item["properties"]["datetime"])[:10] in FIRST_DATES


class Stac:
    """``rustac serve`` on one fixed port, restartable with another set of items."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = _free_port()
        self.server: LocalStacServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def serve(self, name: str, include: Any = None) -> list[dict[str, Any]]:
        self.stop()
        files = prepare_served_catalog(BUNDLED_CATALOG, self.work / name, include)
        self.server = LocalStacServer(files, port=self.port, log_path=self.work / "rustac.log")
        deadline = time.monotonic() + 30
        while True:  # the old socket may linger for a moment after the restart
            try:
                self.server.start()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return [json.loads(f.read_text()) for f in files[1:]]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class Api:
    """The few REST calls of this test, on top of the conftest's ``PrefectServer``."""

    def __init__(self, server: Any) -> None:
        self.s = server
        self.ids = {
            name: str(server.request("GET", f"/deployments/name/{name}")["id"])
            for name in DEPLOYMENTS
        }

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call (503/429 and timeouts retried by the server object's ``rest_call``)."""
        return self.s.request(method, path, body)

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{self.ids[name]}"))

    def set_parameters(self, name: str, parameters: dict[str, Any]) -> None:
        self.s.set_parameters(name, parameters)

    def set_schedules_active(self, name: str, active: bool) -> None:
        """Switch a deployment's schedules on or off (off also deletes its future auto-runs)."""
        self.s.update_schedules(name, active=active)

    def drop_scheduled_runs(self, name: str) -> None:
        """Delete a deployment's runs that have not started yet."""
        for run in self.flow_runs(name):
            if run["state"]["type"] == "SCHEDULED":
                self.request("DELETE", f"/flow_runs/{run['id']}")

    def run(self, name: str, parameters: dict[str, Any] | None = None) -> str:
        """Like the UI's 'Run' button (the deployment's defaults, optionally overridden)."""
        return self.s.run(name, parameters)

    def flow_runs(self, name: str) -> list[dict[str, Any]]:
        return self.s.flow_runs(name)

    def cancel_active(self, name: str, timeout: float = 120) -> None:
        """Cancel a deployment's pending and running runs (left by earlier tests, e.g. a
        scheduled watch run still retrying their stopped STAC API) and wait until they ended:
        the watch deployment runs one at a time and cancels a new run while one is active.

        A leftover the workers never finish cancelling (once in a full CI run: CANCELLING for
        over 120 s while the server's SQLite was locked by heartbeats) is forced to CANCELLED
        after half the timeout: it is an earlier test's, not what the caller tests."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            active = [
                r
                for r in self.flow_runs(name)
                if r["state"]["type"] in ("PENDING", "RUNNING", "CANCELLING")
            ]
            if not active:
                return
            assert time.monotonic() < deadline, [r["state"] for r in active]
            stuck = time.monotonic() - started > timeout / 2
            for r in active:
                if r["state"]["type"] != "CANCELLING" or stuck:
                    self.request(
                        "POST",
                        f"/flow_runs/{r['id']}/set_state",
                        {
                            "state": {"type": "CANCELLED" if stuck else "CANCELLING"},
                            "force": stuck,
                        },
                    )
            time.sleep(2)

    def let_active_finish(self, name: str, timeout: float) -> None:
        """Wait up to ``timeout`` s for a deployment's pending and running runs to end."""
        active = [
            r["id"] for r in self.flow_runs(name) if r["state"]["type"] in ("PENDING", "RUNNING")
        ]
        if active:
            self.wait_all(active, timeout)

    def wait_all(self, run_ids: list[str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.request("GET", f"/flow_runs/{i}") for i in run_ids]
            if all(r["state"]["type"] in FINAL for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(2)

    def events(self, flow_run_id: str, since: datetime) -> list[dict[str, Any]]:
        """The landed events a (watch) flow run emitted."""
        body = {
            "filter": {
                "occurred": {
                    "since": since.isoformat(),
                    "until": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
                },
                "event": {"name": [EVENT_NAME]},
                "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            },
            "limit": 50,
        }
        return list(self.request("POST", "/events/filter", body)["events"])

    def settled_events(self, flow_run_id: str, since: datetime, expect: int) -> list[Any]:
        """Events are persisted in batches: poll until ``expect`` arrived (or a bit longer)."""
        deadline = time.monotonic() + (60 if expect else 12)
        while True:
            found = self.events(flow_run_id, since)
            if (expect and len(found) >= expect) or time.monotonic() > deadline:
                return found
            time.sleep(2)


@pytest.fixture
def stac(tmp_path: Path) -> Iterator[Stac]:
    server = Stac(tmp_path / "stac")
    yield server
    server.stop()


@pytest.fixture
def api(workers: dict[str, Path], deployed: Any) -> Iterator[Api]:
    """The deployments with their schedules off; parameters and schedules restored afterwards."""
    api = Api(deployed)
    saved = {name: api.deployment(name) for name in DEPLOYMENTS}
    for name in DEPLOYMENTS:
        api.set_schedules_active(name, False)
    # A watch run the schedule started earlier (the deployment's default polls for 40 s) would
    # make the watch deployment cancel this test's first run (one at a time, CANCEL_NEW): let
    # it finish (cancelling one can take the workers a minute), cancel only what outlives that.
    api.let_active_finish("eoforge-watch/watch", timeout=90)
    api.cancel_active("eoforge-watch/watch")
    yield api
    for name, dep in saved.items():
        api.set_schedules_active(name, False)
        api.drop_scheduled_runs(name)  # left over with this test's parameters
        api.set_parameters(name, dep["parameters"])
        for sched in dep["schedules"]:
            api.request(
                "PATCH",
                f"/deployments/{api.ids[name]}/schedules/{sched['id']}",
                {"schedule": sched["schedule"], "active": sched["active"]},
            )


@contextmanager
def _landed_trigger_off(api: Api) -> Iterator[None]:
    """Switch off the infer deployment's automations for a test that lands items but does not
    test inference: their triggered runs would share the two cores with what it measures."""
    deployment = api.ids["eoforge-infer/infer"]
    automations = api.request("GET", f"/automations/related-to/prefect.deployment.{deployment}")
    enabled = [a["id"] for a in automations if a.get("enabled")]
    for automation in enabled:
        api.request("PATCH", f"/automations/{automation}", {"enabled": False})
    time.sleep(3)  # the triggers service reloads automations
    try:
        yield
    finally:
        for automation in enabled:
            api.request("PATCH", f"/automations/{automation}", {"enabled": True})


def _log_tail(workers: dict[str, Path]) -> str:
    return workers["cpu"].read_text()[-4000:]


def _provenance(out: Path, run_id: str) -> dict[str, Any]:
    return dict(json.loads((out / "provenance" / f"{run_id}.json").read_text()))


def _staging_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".staging-") or p.suffix == ".tmp"]


def test_landed_items_trigger_inference_of_exactly_those_items(
    api: Api, stac: Stac, workers: dict[str, Path], tmp_path: Path
) -> None:
    t_start = time.monotonic()
    since = datetime.now(UTC) - timedelta(minutes=1)
    out, store = tmp_path / "out", tmp_path / "store"
    first = stac.serve("first", _early)
    assert len(first) == 6
    common = {"spec": SPEC, "store": str(store), "api_url": stac.url}
    api.set_parameters(
        "eoforge-pipeline/pipeline",
        {**common, "out": str(tmp_path / "pipeline"), "train_deployment": None},
    )
    api.set_parameters("eoforge-watch/watch", common)
    api.set_parameters("eoforge-infer/infer", {**common, "out": str(out)})
    assert api.deployment("eoforge-infer/infer")["parameters"]["api_url"] == stac.url

    # 1. the pipeline (first three dates) trains a model; inference uses the production model
    [pipe] = api.wait_all([api.run("eoforge-pipeline/pipeline")], timeout=480)
    assert pipe["state"]["type"] == "COMPLETED", (pipe["state"], _log_tail(workers))
    promotion = json.loads((tmp_path / "pipeline" / "provenance.json").read_text())[
        "orchestration"
    ]["promotion"]
    metrics = json.loads((tmp_path / "pipeline" / "metrics.json").read_text())
    model_dir = promotion["model_dir"]
    # the pipeline decided on its test metrics, and the store's pointer follows the decision
    assert promotion["promoted"] == (metrics["miou"] >= metrics["baseline_miou"]), promotion
    assert (promotion["miou"], promotion["baseline_miou"]) == (
        metrics["miou"],
        metrics["baseline_miou"],
    )
    assert (Path(model_dir) / "model.onnx").is_file()
    if promotion["promoted"]:
        assert json.loads((store / PRODUCTION_POINTER).read_text()) == promotion
    else:
        assert not (store / PRODUCTION_POINTER).exists()
        # A 2-epoch model may lose to the random forest and stay unpromoted; promote it by hand
        # (the pointer promote_model writes) so the triggered runs resolve it like production.
        write_json_atomic(
            store / PRODUCTION_POINTER,
            {**promotion, "promoted": True, "forced_by": "tests/orchestration/test_events.py"},
        )
    t_pipeline = time.monotonic() - t_start

    # 2. a fresh watcher records the six served items and emits nothing
    [w1] = api.wait_all([api.run("eoforge-watch/watch")], timeout=180)
    assert w1["state"]["type"] == "COMPLETED", (w1["state"], _log_tail(workers))
    cursor = json.loads((store / "cursors" / f"{COLLECTION}.json").read_text())
    assert sorted(cursor["seen"]) == sorted(it["id"] for it in first)
    assert api.settled_events(w1["id"], since, expect=0) == []

    # 3. the last two dates land: the STAC API restarts on the same port with all ten items
    served = {it["id"]: it for it in stac.serve("all")}
    assert set(served) - {it["id"] for it in first} == NEW_ITEMS
    expected_events = {
        str(event_id(COLLECTION, i, served[i]["properties"]["updated"])): i for i in NEW_ITEMS
    }
    infer_before = {r["id"] for r in api.flow_runs("eoforge-infer/infer")}
    [w2] = api.wait_all([api.run("eoforge-watch/watch")], timeout=180)
    assert w2["state"]["type"] == "COMPLETED", (w2["state"], _log_tail(workers))
    events = api.settled_events(w2["id"], since, expect=4)
    assert {e["id"]: e["resource"]["prefect.resource.id"] for e in events} == {
        eid: f"stac.item.{COLLECTION}.{item}" for eid, item in expected_events.items()
    }
    for e in events:
        item = expected_events[e["id"]]
        assert e["payload"]["item_id"] == item
        assert e["payload"]["datetime"] == served[item]["properties"]["datetime"]
        assert e["payload"]["href"].endswith(f"/items/{item}")

    # 4. the trigger starts one infer run per event, for exactly that item
    deadline = time.monotonic() + 300
    while True:
        new = [
            r
            for r in api.flow_runs("eoforge-infer/infer")
            if r["id"] not in infer_before and r["parameters"].get("out") == str(out)
        ]
        if (len(new) >= 4 and all(r["state"]["type"] in FINAL for r in new)) or (
            time.monotonic() > deadline
        ):
            break
        time.sleep(3)
    assert len(new) == 4, ([(r["name"], r["state"]["type"]) for r in new], _log_tail(workers))
    assert all(r["state"]["type"] == "COMPLETED" for r in new), (
        [(r["name"], r["state"]) for r in new],
        _log_tail(workers),
    )
    by_event = {r["parameters"]["trigger_event"]: r for r in new}
    assert set(by_event) == set(expected_events)
    for eid, run in by_event.items():
        assert run["parameters"]["item_ids"] == [expected_events[eid]]

    # exactly the new items got predictions, and each provenance names its triggering event
    preds = out / "predictions"
    assert sorted(p.name for p in preds.iterdir()) == sorted(
        f"{i}.{ext}" for i in NEW_ITEMS for ext in ("json", "tif")
    )
    for eid, run in by_event.items():
        prov = _provenance(out, run["id"])
        item = expected_events[eid]
        assert prov["trigger_event"] == eid and prov["item_ids"] == [item]
        assert prov["model_dir"] == model_dir
        assert prov["deployment_id"] == api.ids["eoforge-infer/infer"]
        assert {o["uri"] for o in prov["outputs"]} == {
            *((preds / f"{item}.{ext}").as_uri() for ext in ("tif", "json")),
            (out / "uncertainty" / f"{item}.tif").as_uri(),
        }
        pred_item = json.loads((preds / f"{item}.json").read_text())
        assert any(
            lk["rel"] == "derived_from" and lk["href"].endswith(f"/items/{item}")
            for lk in pred_item["links"]
        )
    t_events = time.monotonic() - t_start

    # 5. concurrently: a third watch run (nothing new) and the same item twice by hand
    item = sorted(NEW_ITEMS)[0]
    before = {ext: (preds / f"{item}.{ext}").read_bytes() for ext in ("tif", "json")}
    w3_id = api.run("eoforge-watch/watch")
    twice = [api.run("eoforge-infer/infer", {"item_ids": [item]}) for _ in range(2)]
    runs = api.wait_all([w3_id, *twice], timeout=300)
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), (
        [(r["name"], r["state"]) for r in runs],
        _log_tail(workers),
    )
    assert api.settled_events(w3_id, since, expect=0) == []
    time.sleep(12)  # a trigger would have fired by now (~10 s after an event)
    later = [
        r["id"]
        for r in api.flow_runs("eoforge-infer/infer")
        if r["id"] not in infer_before and r["parameters"].get("out") == str(out)
    ]
    assert sorted(later) == sorted([*(r["id"] for r in by_event.values()), *twice])

    # idempotent: identical bytes, one COG + one item per scene, nothing half-written
    for ext, data in before.items():
        assert (preds / f"{item}.{ext}").read_bytes() == data, ext
    assert len(list(preds.iterdir())) == 8
    [trig] = [r for eid, r in by_event.items() if expected_events[eid] == item]
    shas = {o["uri"]: o["sha256"] for o in _provenance(out, trig["id"])["outputs"]}
    for run_id in twice:
        prov = _provenance(out, run_id)
        assert prov["trigger_event"] is None and prov["item_ids"] == [item]
        assert {o["uri"]: o["sha256"] for o in prov["outputs"]} == shas
    assert _staging_leftovers(out) == []
    assert not any(p.is_file() for p in (out / ".work").rglob("*"))
    print(
        f"pipeline {t_pipeline:.0f} s, landed -> 4 predictions at {t_events:.0f} s, "
        f"total {time.monotonic() - t_start:.0f} s"
    )


def test_watch_schedule_starts_runs_on_its_own(api: Api, stac: Stac, tmp_path: Path) -> None:
    """The watch deployment's interval schedule fires (the Prefect server's scheduler inserts the
    runs): a watcher that is never scheduled never notices a landed item."""
    store = tmp_path / "store"
    stac.serve("first", _early)
    api.set_parameters(
        "eoforge-watch/watch", {"spec": SPEC, "store": str(store), "api_url": stac.url}
    )
    since = datetime.now(UTC)
    dep = api.deployment("eoforge-watch/watch")
    assert dep["schedules"], "the watch deployment has no schedule"
    for sched in dep["schedules"]:
        api.request(
            "PATCH",
            f"/deployments/{dep['id']}/schedules/{sched['id']}",
            {"schedule": {"interval": 5}, "active": True},
        )
    deadline = time.monotonic() + 150
    done: list[dict[str, Any]] = []
    try:
        while not done and time.monotonic() < deadline:
            time.sleep(3)
            done = [
                r
                for r in api.flow_runs("eoforge-watch/watch")
                if r["auto_scheduled"]
                and datetime.fromisoformat(r["created"]) >= since
                and r["state"]["type"] == "COMPLETED"
            ]
    finally:
        # The runs the 5 s schedule started meanwhile end here, while their STAC API still
        # serves (one poll each): after this test's server stops they would retry it for
        # about 90 s, which the next test's fixture then waits out.
        api.set_schedules_active("eoforge-watch/watch", False)
        api.drop_scheduled_runs("eoforge-watch/watch")
        api.let_active_finish("eoforge-watch/watch", timeout=60)
        api.cancel_active("eoforge-watch/watch")
    server_log = (api.s.home / "server.log").read_text()
    assert done, (
        "no scheduled watch run completed in 150 s; the server's scheduler says: "
        + "\n".join(ln for ln in server_log.splitlines() if "schedul" in ln or "Error" in ln)[
            -2000:
        ]
    )
    cursor = json.loads((store / "cursors" / f"{COLLECTION}.json").read_text())
    assert len(cursor["seen"]) == 6


def test_one_watch_run_polls_and_notices_items_landing_while_it_runs(
    api: Api, stac: Stac, workers: dict[str, Path], tmp_path: Path
) -> None:
    """A watch run with ``poll_seconds``/``run_seconds`` looks again and again: items that land
    while it runs are noticed by that same run within a few polls, and reported once.

    Its events are not counted here: their ids are deterministic per item version, and an
    earlier test of the session may have emitted the same ones, which the server drops as
    repeats. The landed-item trigger is off: four triggered inference runs on the two cores
    left a CI rehearsal's watch run 3 polls in 40 s (an earlier test had failed before
    emitting those events)."""
    with _landed_trigger_off(api):
        _watch_while_items_land(api, stac, workers, tmp_path)


def _watch_while_items_land(api: Api, stac: Stac, workers: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = stac.serve("first", _early)
    api.set_parameters(
        "eoforge-watch/watch",
        {"spec": SPEC, "store": str(store), "api_url": stac.url}
        | {"poll_seconds": 1, "run_seconds": 40},
    )
    api.cancel_active("eoforge-watch/watch")
    run_id = api.run("eoforge-watch/watch")
    cursor = store / "cursors" / f"{COLLECTION}.json"
    deadline = time.monotonic() + 180
    while not cursor.is_file():  # the run's first poll recorded the six items
        assert time.monotonic() < deadline, _log_tail(workers)
        time.sleep(0.5)
    assert sorted(json.loads(cursor.read_text())["seen"]) == sorted(it["id"] for it in first)
    landed_at = time.monotonic()
    stac.serve("all")
    while not set(json.loads(cursor.read_text())["seen"]) >= NEW_ITEMS:
        assert time.monotonic() < landed_at + 30, _log_tail(workers)
        time.sleep(0.2)
    noticed_s = time.monotonic() - landed_at
    run = api.request("GET", f"/flow_runs/{run_id}")
    assert run["state"]["type"] == "RUNNING", run["state"]  # the same run, still polling
    [done] = api.wait_all([run_id], timeout=120)
    assert done["state"]["type"] == "COMPLETED", (done["state"], _log_tail(workers))
    logs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(" poll(s) " in lg["message"] for lg in logs):
        time.sleep(1)  # logs reach the server in batches
        logs = api.request(
            "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
        )
    landed = [m for m in (log["message"] for log in logs) if m.startswith("4 landed item(s):")]
    assert len(landed) == 1 and all(i in landed[0] for i in NEW_ITEMS), landed
    polls = [m for m in (log["message"] for log in logs) if " poll(s) " in m]
    assert polls and int(polls[0].split()[0]) > 10, polls
    assert noticed_s < 15, noticed_s
