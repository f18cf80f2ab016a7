"""STAC search + cube ingest as its own flow (deployment `eoforge-ingest` on the cpu pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from eoforge.config import RunSpec, default_store
from eoforge.orchestration.tasks.stages import ingest_task, run_cached, search_task
from eoforge.runs.pipeline import run_context
from eoforge.runs.stages_data import stac_endpoint


@flow(name="eoforge-ingest", log_prints=True)
def ingest_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    out: str = "runs/ingest",
    store: str | None = None,
    api_url: str | None = None,
) -> dict[str, Any]:
    """Search the STAC API and load the items into the store's cube; ``out`` keeps items.json."""
    store_s = str(Path(store or default_store()).resolve())
    with stac_endpoint(spec, api_url) as url, run_context(Path(out)) as run_path:
        s = search_task(spec, url, str(run_path))
        key = s["keys"]["cube"]
        c = run_cached(ingest_task, store_s, "cube", key, spec, s["items_uri"], store_s, key)
        (run_path / "provenance.json").write_text("{}\n")  # marks the folder as an eoforge run
    return {"search": s, "ingest": c}
