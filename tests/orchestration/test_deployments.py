"""Deploy, trigger through the API like the UI, run on real workers, then rerun from cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import BUNDLED_CATALOG

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PARAMS = {
    "spec": {
        "train": {
            "max_seconds": 15,
            "max_epochs": 2,
            "rf_n_estimators": 10,
            "rf_train_pixels": 20000,
        },
    },
    "train_deployment": "eoforge-train/train",
}


def test_deployments_have_ui_forms_pools_and_schedule(deployed: Any) -> None:
    dep = deployed.request("GET", "/deployments/name/eoforge-pipeline/pipeline")
    schema = dep["parameter_openapi_schema"]
    assert {"spec", "out", "store", "api_url", "train_deployment"} <= set(schema["properties"])
    stac = schema["definitions"]["StacSpec"]["properties"]
    assert stac["collection"]["default"] == "sentinel-2-l2a" and stac["collection"]["description"]
    # the form's default names the bundled sample, not the install's absolute path
    spec_default = schema["properties"]["spec"]["default"]
    assert spec_default["stac"]["catalog_dir"] == "bundled:s2-l2a-mini"
    assert str(BUNDLED_CATALOG) not in json.dumps(schema)
    assert dep["work_pool_name"] == "cpu"
    train = deployed.request("GET", "/deployments/name/eoforge-train/train")
    assert train["work_pool_name"] == "gpu"
    infer = deployed.request("GET", "/deployments/name/eoforge-infer/infer")
    assert infer["schedules"] and infer["schedules"][0]["schedule"]["cron"] == "0 * * * *"
    # embeddings (ADR 0013): the whole run and one deployment per product, with UI forms
    embed = deployed.request("GET", "/deployments/name/eoforge-embed/embed")
    assert {"spec", "out", "dims", "labels", "classes"} <= set(
        embed["parameter_openapi_schema"]["properties"]
    )
    for flow_name, name in (("eoforge-embed-classify", "embed-classify"),
                            ("eoforge-embed-clusters", "embed-clusters"),
                            ("eoforge-embed-similarity", "embed-similarity")):  # fmt: skip
        dep = deployed.request("GET", f"/deployments/name/{flow_name}/{name}")
        assert dep["work_pool_name"] == "cpu"
        assert "field_uri" in dep["parameter_openapi_schema"]["required"]


def test_pipeline_runs_on_workers_and_rerun_is_cached(
    workers: dict[str, Path], deployed: Any, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    params = {**PARAMS, "out": str(out)}
    t0 = time.monotonic()
    first = deployed.wait(deployed.run_deployment_like_the_ui("eoforge-pipeline/pipeline", params))
    first_s = time.monotonic() - t0
    assert first["state"]["type"] == "COMPLETED", (
        workers["cpu"].read_text()[-4000:],
        first["state"],
    )
    assert first["work_pool_name"] == "cpu"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["orchestration"]["flow_run_id"] == first["id"]
    assert prov["orchestration"]["deployment_id"] == first["deployment_id"]
    child_id = prov["orchestration"]["train_flow_run_id"]
    child = deployed.request("GET", f"/flow_runs/{child_id}")
    assert child["work_pool_name"] == "gpu" and child["state"]["type"] == "COMPLETED"
    assert child_id in workers["gpu"].read_text() or child["name"] in workers["gpu"].read_text()
    assert (out / "predictions").is_dir() and (out / "report.html").is_file()
    artifacts = deployed.request(
        "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [first["id"]]}}}
    )
    by_key = {a["key"]: a for a in artifacts}
    assert {"eoforge-run-stages", "eoforge-run-provenance"} <= set(by_key)
    assert (out / "provenance.json").as_uri() in by_key["eoforge-run-provenance"]["data"]
    lineage = [tr for tr in deployed.task_runs(first["id"]) if tr["name"].startswith("lineage")]
    assert len(lineage) >= 4 and all(tr["state"]["type"] == "COMPLETED" for tr in lineage)

    t0 = time.monotonic()
    second = deployed.wait(deployed.run_deployment_like_the_ui("eoforge-pipeline/pipeline", params))
    second_s = time.monotonic() - t0
    assert second["state"]["type"] == "COMPLETED"
    states = {
        tr["task_key"].split(".")[-1] if False else tr["name"].rsplit("-", 1)[0]: tr["state"][
            "name"
        ]
        for tr in deployed.task_runs(second["id"])
    }
    assert (
        states["ingest"] == "Cached"
        and states["chips"] == "Cached"
        and states["baseline"] == "Cached"
    ), states
    assert states["infer"] == "Completed"
    prov2 = json.loads((out / "provenance.json").read_text())
    child2 = prov2["orchestration"]["train_flow_run_id"]
    child_states = {
        tr["name"].rsplit("-", 1)[0]: tr["state"]["name"] for tr in deployed.task_runs(child2)
    }
    assert child_states["train-export"] == "Cached", child_states
    # provenance says what Prefect's task states say: every stored product was reused
    reused = prov2["reused_from_store"]
    assert all(reused[k] for k in ("ingest", "chips", "train", "baseline")), reused
    # the task states above prove the reuse; wall times depend on the workers' polling and the
    # machine's load (a rerun has waited longer for the gpu worker than the first run took)
    print(f"first run {first_s:.1f} s, cached rerun {second_s:.1f} s")
