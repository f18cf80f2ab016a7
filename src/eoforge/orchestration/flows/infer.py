"""Inference with the production model on selected items: on a schedule, or per landed STAC item."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import deployment, flow_run

from eoforge.config import RunSpec, default_store
from eoforge.io.atomic import sha256_file
from eoforge.io.stores import is_remote
from eoforge.orchestration.tasks.drift import publish_drift
from eoforge.orchestration.tasks.stages import infer_task, ingest_task, run_cached, search_task
from eoforge.runs.provenance import git_revision, output_uri, package_versions, write_provenance
from eoforge.runs.stages_data import stac_endpoint
from eoforge.runs.store import production_model


@flow(name="eoforge-infer", log_prints=True)
def infer_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    out: str = "runs/infer",
    store: str | None = None,
    api_url: str | None = None,
    item_ids: list[str] | None = None,
    model_dir: str | None = None,
    trigger_event: str | None = None,
) -> dict[str, Any]:
    """Predict ``item_ids`` (default: every item the search finds) with the production model.

    Predictions accumulate in ``out/predictions`` (one COG + STAC item per item, written
    atomically with deterministic bytes, so reprocessing converges); each run leaves
    ``out/provenance/<flow-run-id>.json`` naming the event that triggered it, if any. ``out``
    may be an object-store prefix (``s3://bucket/infer``): the run writes in a local folder and
    uploads each COG before its item, and its provenance last (ADR 0016).
    """
    from eoforge.runs.remote import check_writable_prefix, publish_files

    store_s = str(Path(store or default_store()).resolve())
    model = model_dir or production_model(store_s)
    run_id = str(flow_run.id or "local")
    remote = is_remote(out)
    if remote:
        check_writable_prefix(out)  # a missing bucket fails before any work
    local = Path(tempfile.mkdtemp(prefix="eoforge-infer-") if remote else out).resolve()
    work = local / ".work" / run_id
    work.mkdir(parents=True, exist_ok=True)
    try:
        with stac_endpoint(spec, api_url) as url:
            s = search_task(spec, url, str(work), item_ids)
        key = s["keys"]["cube"]
        c = run_cached(ingest_task, store_s, "cube", key, spec, s["items_uri"], store_s, key)
        ids = list(item_ids) if item_ids is not None else list(s["item_ids"])
        r = infer_task(spec, model, c["cube_uri"], s["items_uri"], str(local), ids, False)
        files = [
            p
            for v in r["predictions"].values()
            for p in (v["cog"], v.get("uncertainty"), v["item"])  # each item after its COGs
            if p
        ]
        target = {p: output_uri(Path(p).resolve().relative_to(local), out) for p in files}
        if remote:
            publish_files([(Path(p), target[p]) for p in files], out)
        drifted = publish_drift(r.get("drift", {}), model)
        provenance = {
            "flow_run_id": run_id,
            "deployment_id": deployment.id,
            "trigger_event": trigger_event,
            "item_ids": ids,
            "model_dir": model,
            "stac_items": s["item_ids"],
            "cube": c["cube_uri"],
            "outputs": [{"uri": target[p], "sha256": sha256_file(Path(p))} for p in files],
            "contracts": {
                "items": s["contract"],
                "cube": c["contract"],
                "predictions": r["contract"],
            },
            "packages": package_versions(),
            "git": git_revision(),
        }
        record = local / "provenance" / f"{run_id}.json"
        write_provenance(record, provenance)
        if remote:
            publish_files([(record, output_uri(record.relative_to(local), out))], out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if remote:  # the local copy of what was published (or of a failed run)
            shutil.rmtree(local, ignore_errors=True)
    predictions = r["predictions"]
    if remote:  # where the outputs are now
        predictions = {
            k: {f: target.get(x, x) if isinstance(x, str) else x for f, x in v.items()}
            for k, v in predictions.items()
        }
    return {
        "item_ids": ids,
        "predictions": predictions,
        "trigger_event": trigger_event,
        "drifted": drifted,
    }
