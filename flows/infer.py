"""Inference with the production model on selected (or all searched) items: scheduled or event-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from eoforge.config import RunSpec, default_store
from eoforge.pipeline import production_model, run_context, stac_endpoint
from tasks.stages import cached, infer_task, ingest_task, search_task


@flow(name="eoforge-infer", log_prints=True)
def infer_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    out: str = "runs/infer",
    store: str | None = None,
    api_url: str | None = None,
    item_ids: list[str] | None = None,
    model_dir: str | None = None,
) -> dict[str, Any]:
    """Predict ``item_ids`` (default: every item the search finds) with the production model."""
    store_s = str(Path(store or default_store()).resolve())
    model = model_dir or production_model(store_s)
    with stac_endpoint(spec, api_url) as url, run_context(Path(out)) as run_path:
        s = search_task(spec, url, str(run_path))
        key = s["keys"]["cube"]
        c = cached(ingest_task, store_s, "cube", key)(spec, s["items_uri"], store_s, key)
        ids = item_ids if item_ids is not None else s["item_ids"]
        r = infer_task(spec, model, c["cube_uri"], s["items_uri"], str(run_path), ids)
        (run_path / "provenance.json").write_text("{}\n")
    return {"search": s, "ingest": c, "infer": r}
