"""The whole chain as one Prefect flow; the GPU stage can run as its own deployment on the gpu pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from eoforge.config import RunSpec, default_store
from eoforge.errors import TransientError
from eoforge.labels.sources import check_label_source
from eoforge.ops.zombies import RunLock
from eoforge.orchestration.tasks.publish import lineage_inputs, publish_artifacts, record_lineage
from eoforge.orchestration.tasks.stages import (
    baseline_task,
    chips_task,
    evaluate_task,
    infer_task,
    ingest_task,
    report_task,
    run_cached,
    search_task,
    track_task,
    train_task,
)
from eoforge.runs.pipeline import check_run_places, plan_stages, run_context
from eoforge.runs.progress import stage
from eoforge.runs.stages_data import stac_endpoint
from eoforge.runs.stages_report import stage_summary
from eoforge.runs.store import promote_model, stored


@task(name="promote-model", persist_result=False)
def promote_task(store: str, model_dir: str, metrics: dict[str, Any], run: str) -> dict[str, Any]:
    return promote_model(store, model_dir, metrics, run)


def _train_on_pool(
    deployment: str, spec: RunSpec, cube_uri: str, store: str, keys: dict[str, str]
) -> dict[str, Any]:
    """Run the train deployment (its work pool decides the machine) and wait for it."""
    model_dir = stored(store, "model", keys["model"])
    reused = model_dir.exists()
    child = run_deployment(
        deployment,
        parameters={
            "spec": spec.model_dump(mode="json"),
            "cube_uri": cube_uri,
            "store": store,
            "chips_key": keys["chips"],
            "model_key": keys["model"],
        },
        idempotency_key=f"train-{keys['model'][:24]}-{flow_run.id}",
        timeout=None,
    )
    state = child.state  # type: ignore[union-attr]
    if state is None or not state.is_completed():
        raise TransientError(
            f"train deployment '{deployment}' run {child.id} ended "  # type: ignore[union-attr]
            f"{state.name if state else 'without a state'}: {state.message if state else ''}"
        )
    import json

    summary = json.loads((model_dir / "training.json").read_text())
    return {"model_dir": str(model_dir), "reused": reused, "flow_run_id": str(child.id), **summary}  # type: ignore[union-attr]


@flow(name="eoforge-pipeline", log_prints=True)
def pipeline_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - a frozen model: safe default, shown in the UI form
    out: str = "runs/pipeline",
    store: str | None = None,
    api_url: str | None = None,
    train_deployment: str | None = None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    """Search -> ingest -> chips -> train + export -> baseline -> infer -> evaluate -> report.

    Args:
        spec: the run specification.
        out: run folder, published atomically when every stage and contract passed.
        store: content-addressed store of cubes, chips and models (default $EOFORGE_STORE).
        api_url: STAC API; None uses spec.stac.api_url or serves spec.stac.catalog_dir locally.
        train_deployment: run training as this deployment (e.g. on the gpu work pool)
            instead of in this flow run.
        stages: run only these stages and the ones they need (e.g. ["ingest", "chips"]);
            None runs them all. Without the report stage the run folder holds provenance.json.
    """
    plan = plan_stages(stages)
    store_s = str(Path(store or default_store()).resolve())
    check_run_places(Path(out), store_s)  # a read-only, full or foreign place stops it here
    check_label_source(
        spec.labels, spec.stac.label_asset
    )  # bad label files stop the run before anything is written
    final = str(Path(out).resolve())
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name not in plan:
            return {}
        t0 = time.perf_counter()
        with stage(name):
            value = call()
        value["stage_seconds"] = time.perf_counter() - t0
        results[name] = value
        return value

    with (
        RunLock(Path(store_s) / "runs", str(flow_run.id)),  # lets the reaper see a crash
        stac_endpoint(spec, api_url) as url,
        run_context(Path(out)) as run_path,
    ):
        rd = str(run_path)
        s = run("search", lambda: search_task(spec, url, rd))
        keys = s.get("keys", {})

        def cached(task_: Any, kind: str, *args: Any) -> Callable[[], dict[str, Any]]:
            return lambda: run_cached(task_, store_s, kind, keys[kind], *args, store_s, keys[kind])

        c = run("ingest", cached(ingest_task, "cube", spec, s.get("items_uri")))
        ch = run("chips", cached(chips_task, "chips", spec, c.get("cube_uri")))
        if train_deployment:
            m = run(
                "train",
                lambda: _train_on_pool(train_deployment, spec, c["cube_uri"], store_s, keys),
            )
        else:
            m = run("train", cached(train_task, "model", spec, ch.get("chips_uri")))
        b = run(
            "baseline",
            cached(baseline_task, "baseline", spec, ch.get("chips_uri"), c.get("cube_uri")),
        )
        run("infer", lambda: infer_task(spec, m["model_dir"], c["cube_uri"], s["items_uri"], rd))
        e = run("evaluate", lambda: evaluate_task(spec, c["cube_uri"], b["baseline_dir"], rd))
        run("track", lambda: track_task(spec, rd, store_s, m, e["metrics"]))
        orchestration: dict[str, Any] = {
            "engine": "prefect",
            "flow_run_id": str(flow_run.id),
            "flow_run_name": flow_run.name,
            "deployment_id": deployment.id,
            "task_run_ids": {k: v.get("task_run_id") for k, v in results.items()},
            "train_flow_run_id": m.get("flow_run_id"),
        }
        if "report" not in plan:
            results["summary"] = stage_summary(spec, rd, final, results, orchestration)
            return results
        orchestration["promotion"] = promote_task(store_s, m["model_dir"], e["metrics"], final)
        with stage("report"):
            results["report"] = report_task(spec, rd, final, results, orchestration)
        lineage = lineage_inputs(results, spec.stac.collection)
    # published: artifacts and lineage point at the final run folder
    lineage["predictions"] = [
        str(Path(final) / "predictions" / Path(p).name) for p in lineage["predictions"]
    ]
    record_lineage(**lineage)
    results["artifacts"] = publish_artifacts(final)
    return results
