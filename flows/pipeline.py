"""The whole chain as one Prefect flow: search -> ingest -> chips -> train/baseline -> export -> infer -> evaluate -> report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from eoforge.config import RunSpec
from tasks.stages import (
    baseline_task,
    chips_task,
    evaluate_task,
    export_task,
    infer_task,
    ingest_task,
    report_task,
    search_task,
    train_task,
)


@flow(name="eoforge-pipeline", log_prints=True)
def pipeline_flow(spec: RunSpec, api_url: str, run_dir: str, final_dir: str) -> dict[str, Any]:
    """Run every stage on ``run_dir`` (a staging folder published as ``final_dir`` by the caller)."""
    results: dict[str, dict[str, Any]] = {}
    steps = [
        ("search", lambda: search_task(spec, api_url, run_dir)),
        ("ingest", lambda: ingest_task(spec, run_dir)),
        ("chips", lambda: chips_task(spec, run_dir)),
        ("train", lambda: train_task(spec, run_dir)),
        ("baseline", lambda: baseline_task(spec, run_dir)),
        ("export", lambda: export_task(spec, run_dir)),
        ("infer", lambda: infer_task(spec, run_dir)),
        ("evaluate", lambda: evaluate_task(spec, run_dir)),
    ]
    for name, step in steps:
        t0 = time.perf_counter()
        results[name] = step()
        results[name]["stage_seconds"] = time.perf_counter() - t0
    orchestration = {
        "engine": "prefect",
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "task_run_ids": {k: v.get("task_run_id") for k, v in results.items()},
    }
    results["report"] = report_task(spec, run_dir, final_dir, results, orchestration)
    return results
