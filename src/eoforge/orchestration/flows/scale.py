"""Scene-level fan-out flows on Dask: search -> plan -> one task per batch of scenes.

The flows run their scene tasks with ``prefect_dask.DaskTaskRunner`` on the cluster a
:class:`~eoforge.compute.cluster.DaskSpec` names (a LocalCluster by default). Dask workers report to
the same Prefect API as the flow, so run them against a real server (``prefect server start``,
or ``prefect_test_harness`` in tests), not the per-process ephemeral one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.runtime import flow_run
from prefect_dask.task_runners import DaskTaskRunner

from eoforge.compute.cluster import DaskSpec
from eoforge.config import CubeSpec, InferSpec, StacSpec
from eoforge.orchestration.tasks.drift import publish_drift
from eoforge.orchestration.tasks.scale import (
    infer_scenes_task,
    ingest_scenes_task,
    plan_scenes_task,
)


def task_runner_for(spec: DaskSpec) -> DaskTaskRunner:
    """A Dask task runner for ``spec``: its scheduler address, or a new LocalCluster."""
    if spec.scheduler_address is not None:
        return DaskTaskRunner(address=spec.scheduler_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster", cluster_kwargs=spec.local_cluster_kwargs()
    )


def _summary(results: list[list[dict[str, Any]]], t0: float, batches: int) -> dict[str, Any]:
    scenes = [r for batch in results for r in batch]
    seconds = time.perf_counter() - t0
    return {
        "flow_run_id": str(flow_run.id),
        "scenes": len(scenes),
        "tasks": batches,
        "seconds": seconds,
        "scenes_per_s": len(scenes) / max(seconds, 1e-9),
        "results": sorted(scenes, key=lambda r: str(r["item_id"])),
    }


@flow(name="eoforge-scale-ingest", task_runner=DaskTaskRunner(), log_prints=True)  # type: ignore[arg-type]  # prefect-dask runner generics
def scale_ingest_flow(
    stac: StacSpec,
    api_url: str,
    out: str,
    dask: DaskSpec | None = None,
    cube: CubeSpec | None = None,
) -> dict[str, Any]:
    """Ingest every scene a STAC search returns into ``<out>/scenes/<item_id>.zarr``.

    Each scene is written like a run's cube: over the search's area of interest
    (``stac.bbox`` / ``stac.aoi``), on the grid and in the units of ``cube``, the label asset
    as a class raster; scenes that miss the area are skipped. Run it through
    :func:`run_scale_ingest` so the task runner follows ``dask``.
    """
    import shapely.geometry

    from eoforge.stac.aoi import aoi_geometry

    dask = dask or DaskSpec()
    area = aoi_geometry(stac)
    aoi = shapely.geometry.mapping(area) if area is not None else None
    batches = plan_scenes_task(stac, api_url, out, dask.scenes_per_task)
    t0 = time.perf_counter()
    futures = ingest_scenes_task.map(
        batches,
        unmapped([*stac.bands, stac.label_asset]),
        unmapped(out),
        unmapped(dask),
        unmapped(cube),
        unmapped(aoi),
        unmapped([stac.label_asset]),
    )
    return _summary(futures.result(), t0, len(batches))


@flow(name="eoforge-scale-infer", task_runner=DaskTaskRunner(), log_prints=True)  # type: ignore[arg-type]  # prefect-dask runner generics
def scale_infer_flow(
    stac: StacSpec,
    api_url: str,
    onnx_path: str,
    out: str,
    classes: list[str],
    infer: InferSpec | None = None,
    dask: DaskSpec | None = None,
    model_href: str | None = None,
    cube: CubeSpec | None = None,
) -> dict[str, Any]:
    """Predict every scene a STAC search returns; ``<out>/predictions/<item_id>.tif`` + ``.json``.

    Each scene is ingested over the search's area of interest (``stac.bbox`` / ``stac.aoi``)
    on the grid and in the units of ``cube``, like a run's cube; scenes that miss the area are
    skipped. Run it through :func:`run_scale_infer` so the task runner follows ``dask``.
    """
    import shapely.geometry

    from eoforge.stac.aoi import aoi_geometry

    dask = dask or DaskSpec()
    infer = infer or InferSpec()  # type: ignore[call-arg]
    area = aoi_geometry(stac)
    aoi = shapely.geometry.mapping(area) if area is not None else None
    batches = plan_scenes_task(stac, api_url, out, dask.scenes_per_task)
    t0 = time.perf_counter()
    futures = infer_scenes_task.map(
        batches,
        unmapped(onnx_path),
        unmapped(out),
        unmapped(list(stac.bands)),
        unmapped(classes),
        unmapped(infer),
        unmapped(dask),
        unmapped(model_href),
        unmapped(cube),
        unmapped(aoi),
    )
    summary = _summary(futures.result(), t0, len(batches))
    drift = {str(r["item_id"]): r["drift"] for r in summary["results"] if r.get("drift")}
    # a table artifact and an eoforge.model.drift event per drifted scene, as the infer flow
    summary["drifted"] = publish_drift(drift, str(Path(onnx_path).parent))
    return summary


def run_scale_ingest(
    stac: StacSpec,
    api_url: str,
    out: str,
    dask: DaskSpec | None = None,
    cube: CubeSpec | None = None,
) -> dict[str, Any]:
    """Run :func:`scale_ingest_flow` on the cluster ``dask`` names."""
    dask = dask or DaskSpec()
    runner = scale_ingest_flow.with_options(task_runner=task_runner_for(dask))  # type: ignore[arg-type]
    result: dict[str, Any] = runner(stac, api_url, out, dask, cube)
    return result


def run_scale_infer(
    stac: StacSpec,
    api_url: str,
    onnx_path: str,
    out: str,
    classes: list[str],
    infer: InferSpec | None = None,
    dask: DaskSpec | None = None,
    model_href: str | None = None,
    cube: CubeSpec | None = None,
) -> dict[str, Any]:
    """Run :func:`scale_infer_flow` on the cluster ``dask`` names."""
    dask = dask or DaskSpec()
    runner = scale_infer_flow.with_options(task_runner=task_runner_for(dask))  # type: ignore[arg-type]
    result: dict[str, Any] = runner(
        stac, api_url, onnx_path, out, classes, infer, dask, model_href, cube
    )
    return result
