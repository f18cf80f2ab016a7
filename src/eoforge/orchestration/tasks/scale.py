"""Prefect tasks of the scene-level fan-out; the work itself lives in :mod:`eoforge.runs.scenes`.

One task run per batch of scenes (``DaskSpec.scenes_per_task``, one scene by default), never per
chip: each lasts seconds, so Prefect's ~0.1 s per task on Dask stays a small share. Inputs are
URIs and small specs, never arrays (Prefect hashes task inputs on every call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from eoforge.compute.cluster import DaskSpec
from eoforge.config import CubeSpec, InferSpec, StacSpec
from eoforge.orchestration.tasks.stages import retry_unless_final
from eoforge.runs import scenes
from eoforge.stac.search import search_items

_RETRY = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_final,
}


@task(name="plan-scenes", cache_policy=NO_CACHE, **_RETRY)  # type: ignore[call-overload]
def plan_scenes_task(stac: StacSpec, api_url: str, out: str, scenes_per_task: int) -> list[str]:
    """Search the STAC API and write one batch file per task; return the batch URIs."""
    items = search_items(stac, api_url)
    return scenes.plan_scenes(items, Path(out), scenes_per_task).batches


# Scene tasks skip already-written scenes themselves (fingerprint check), so Prefect's input
# cache is off: it would only hash inputs and could hide a deleted output.
@task(name="ingest-scenes", cache_policy=NO_CACHE, **_RETRY)  # type: ignore[call-overload]
def ingest_scenes_task(
    batch_uri: str,
    variables: list[str],
    out: str,
    dask: DaskSpec,
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
    label_variables: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Ingest every scene of one batch into ``scenes/<item_id>.zarr`` (over ``aoi``, a lon/lat
    GeoJSON geometry, on the grid and in the units of ``cube``)."""
    return scenes.ingest_batch(
        batch_uri,
        variables,
        out,
        chunks=dask.chunks,
        scheduler=dask.scene_scheduler,
        cube=cube,
        aoi=aoi,
        label_variables=label_variables or (),
    )


@task(  # type: ignore[call-overload]
    name="infer-scenes", cache_policy=NO_CACHE, **_RETRY
)
def infer_scenes_task(
    batch_uri: str,
    onnx_path: str,
    out: str,
    bands: list[str],
    classes: list[str],
    infer: InferSpec,
    dask: DaskSpec,
    model_href: str | None = None,
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Predict every scene of one batch (over ``aoi``, a lon/lat GeoJSON geometry, on the grid
    and in the units of ``cube``); a COG and a STAC item per scene."""
    return scenes.infer_batch(
        batch_uri,
        onnx_path,
        out,
        bands=bands,
        classes=classes,
        spec=infer,
        model_href=model_href,
        chunks=dask.chunks,
        scheduler=dask.scene_scheduler,
        cube=cube,
        aoi=aoi,
    )
