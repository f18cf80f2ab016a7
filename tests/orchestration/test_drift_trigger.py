"""The drift -> retraining trigger of ``deployments/prefect.yaml`` on a real Prefect server: it
is deployed disabled; enabled, one ``eoforge.model.drift`` event (as
:func:`eoforge.orchestration.tasks.drift.publish_drift` emits it) schedules a run of the
pipeline deployment with the trigger's parameters. The run is cancelled before any worker takes
it, and the trigger is disabled again, so the rest of the session is unaffected."""

from __future__ import annotations

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
        assert new[0]["parameters"]["out"] == "runs/retrain"
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
