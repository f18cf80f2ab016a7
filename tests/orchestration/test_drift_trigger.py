"""The drift -> retraining trigger of ``deployments/prefect.yaml`` on a real Prefect server: it
is deployed disabled; enabled, one ``eoforge.model.drift`` event (as
:func:`eoforge.orchestration.tasks.drift.publish_drift` emits it) schedules a run of the
pipeline deployment with the trigger's parameters. The run is cancelled before any worker takes
it, and the trigger is disabled again, so the rest of the session is unaffected."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from eoforge.orchestration.tasks.drift import DRIFT_EVENT, model_resource_id

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]


def _drift_automation(server: Any, deployment_id: str) -> dict[str, Any]:
    automations = server.request(
        "GET", f"/automations/related-to/prefect.deployment.{deployment_id}"
    )
    found = [a for a in automations if DRIFT_EVENT in (a.get("trigger") or {}).get("expect", [])]
    assert len(found) == 1, [a.get("trigger") for a in automations]
    return dict(found[0])


def _pipeline_runs(server: Any, deployment_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    return list(server.request("POST", "/flow_runs/filter", body))


def test_drift_event_schedules_retraining_only_when_enabled(deployed: Any) -> None:
    pipeline = deployed.request("GET", "/deployments/name/eoforge-pipeline/pipeline")
    automation = _drift_automation(deployed, pipeline["id"])
    assert automation["enabled"] is False, "the retraining trigger ships disabled"
    before = {r["id"] for r in _pipeline_runs(deployed, pipeline["id"])}
    model = "/store/model/abc"
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": DRIFT_EVENT,
        "resource": {
            "prefect.resource.id": model_resource_id(model),
            "prefect.resource.name": model,
        },
        "payload": {"item_id": "S2B_33TWL_20230810_0_L2A", "reasons": ["band nir: moved"]},
    }
    deployed.request("PATCH", f"/automations/{automation['id']}", {"enabled": True})
    try:
        time.sleep(3)  # the triggers service reloads automations
        deployed.request("POST", "/events", [event])
        deadline = time.monotonic() + 120
        new: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not new:
            time.sleep(2)
            new = [r for r in _pipeline_runs(deployed, pipeline["id"]) if r["id"] not in before]
        assert len(new) == 1, "one drift event -> one retraining run"
        # under EOFORGE_RUNS (absolute), never relative to the workers' folder (the package)
        assert new[0]["parameters"]["out"] == f"{deployed.env['EOFORGE_RUNS']}/retrain"
        assert new[0]["parameters"]["train_deployment"] == "eoforge-train/train"
    finally:
        deployed.request("PATCH", f"/automations/{automation['id']}", {"enabled": False})
        for run in _pipeline_runs(deployed, pipeline["id"]):
            if run["id"] not in before and run["state"]["type"] in ("SCHEDULED", "PENDING"):
                deployed.request(
                    "POST",
                    f"/flow_runs/{run['id']}/set_state",
                    {"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
                )


FLOW = """
import json, sys
from prefect import flow
from eoforge.orchestration.tasks.drift import publish_drift

@flow(name="drift-publish-check")
def check(drift: dict) -> list:
    return publish_drift(drift, "/store/model/drift-check")

print(json.dumps(check(json.loads(sys.argv[1]))))
"""


def _scores(drifted: bool) -> dict[str, Any]:
    return {
        "drifted": drifted,
        "max_band_shift": 3.2 if drifted else 0.4,
        "max_band_psi": 1.0,
        "max_band_wasserstein_iqr": 0.5,
        "class_psi": 0.01,
        "obscured_fraction": 0.1,
        "reasons": ["band nir: quantiles moved 3.20 x"] if drifted else [],
    }


def test_publish_drift_writes_the_artifact_and_one_event_per_drifted_item(
    prefect_server: Any,
) -> None:
    drift = {"ITEM_OK": _scores(False), "ITEM_HAZY": _scores(True)}
    since = datetime.now(UTC).isoformat()
    proc = subprocess.run(
        [sys.executable, "-c", FLOW, json.dumps(drift)],
        env=prefect_server.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["ITEM_HAZY"]
    artifacts = prefect_server.request(
        "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": ["eoforge-drift"]}}}
    )
    rows = json.loads(artifacts[-1]["data"])
    assert {r["item_id"]: r["drifted"] for r in rows} == {"ITEM_OK": False, "ITEM_HAZY": True}
    body = {"filter": {"event": {"name": [DRIFT_EVENT]}, "occurred": {"since": since}}}
    deadline = time.monotonic() + 60
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = [
            e
            for e in prefect_server.request("POST", "/events/filter", body)["events"]
            if e["payload"].get("model_dir") == "/store/model/drift-check"
        ]
        if events:
            break
        time.sleep(1)
    assert [e["payload"]["item_id"] for e in events] == ["ITEM_HAZY"]
    assert events[0]["resource"]["prefect.resource.id"] == model_resource_id(
        "/store/model/drift-check"
    )
