"""Scene-level fan-out: plan many STAC items into task batches, then ingest or predict each scene.

Work is cut per *scene* (one STAC item), never per chip or window, so one task lasts seconds and
a catalog of thousands of scenes stays a graph of thousands of tasks at most
(``scenes_per_task`` divides that further). Tasks receive the URI of a batch file, never arrays
or item lists, so an orchestrator hashes a short string per task.

Layout under the work folder ``out``::

    plan/batch-000000.ndjson   items of one task, one per line (written before the fan-out)
    scenes/<item_id>.zarr      one Zarr v3 store per ingested scene (same variables and attrs
                               as a tile group of ``cube.zarr``, ADR 0001), written atomically
    predictions/<item_id>.tif  prediction COG + ``.json`` STAC item per scene (ADR 0001)

The same batch functions run in a plain loop (:func:`run_serial`), on a Dask cluster
(:func:`run_on_dask`), or as Prefect tasks on ``prefect-dask`` (``flows/scale.py``).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from eoforge.config import CubeSpec, InferSpec
from eoforge.cube.build import cube_fingerprint
from eoforge.errors import InputError
from eoforge.io.atomic import staged_dir
from eoforge.stac.items import item_tile

if TYPE_CHECKING:
    import xarray as xr
    from distributed import Client

__all__ = [
    "ScenePlan",
    "SceneScheduler",
    "infer_batch",
    "infer_scene",
    "ingest_batch",
    "ingest_scene",
    "plan_scenes",
    "read_batch",
    "run_on_dask",
    "run_serial",
    "scene_store",
]

SceneScheduler = Literal["synchronous", "threads"]
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class ScenePlan:
    """What :func:`plan_scenes` wrote: one batch file per task."""

    out: Path
    """Work folder (holds ``plan/``, ``scenes/``, ``predictions/``)."""
    batches: list[str]
    """Batch file URIs (paths), one per task, in item order."""
    n_scenes: int
    """Number of scenes over all batches."""


def _check_id(item: dict[str, Any]) -> str:
    item_id = str(item.get("id", ""))
    if not _SAFE_ID.match(item_id):
        raise InputError(
            f"STAC item id {item_id!r} cannot name a file (letters, digits, '.', '_', '+', '-' "
            "only, not starting with a dot); rename the item or exclude it."
        )
    return item_id


def plan_scenes(items: Sequence[dict[str, Any]], out: Path, scenes_per_task: int = 1) -> ScenePlan:
    """Split ``items`` into batches of ``scenes_per_task`` and write one file per batch.

    The ``plan/`` folder is replaced atomically, so a re-plan never mixes two plans.

    Args:
        items: STAC items as dicts, e.g. from :func:`eoforge.stac.search.search_items`.
        out: work folder (created).
        scenes_per_task: scenes per batch (>= 1).

    Raises:
        InputError: no items, duplicate or unsafe item ids, or ``scenes_per_task`` < 1.
    """
    if scenes_per_task < 1:
        raise InputError(f"scenes_per_task={scenes_per_task} must be >= 1.")
    if not items:
        raise InputError("no STAC items to plan; the search returned nothing to fan out.")
    ids = [_check_id(it) for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(f"STAC item ids {dup} occur more than once; deduplicate the items.")
    out = Path(out)
    final = out / "plan"
    batches: list[str] = []
    with staged_dir(final) as staging:
        for n, start in enumerate(range(0, len(items), scenes_per_task)):
            name = f"batch-{n:06d}.ndjson"
            lines = (
                json.dumps(it, separators=(",", ":"))
                for it in items[start : start + scenes_per_task]
            )
            (staging / name).write_text("\n".join(lines) + "\n")
            batches.append(str(final / name))
    return ScenePlan(out=out, batches=batches, n_scenes=len(items))


def read_batch(batch_uri: str | Path) -> list[dict[str, Any]]:
    """The items of one batch file written by :func:`plan_scenes`.

    Raises:
        InputError: the file is missing or a line is not a JSON object.
    """
    path = Path(batch_uri)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise InputError(f"batch file '{path}' does not exist; run plan_scenes first.") from exc
    items: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"batch file '{path}' line {n} is not JSON ({exc}); re-plan.") from exc
        if not isinstance(item, dict):
            raise InputError(f"batch file '{path}' line {n} is not a JSON object; re-plan.")
        items.append(item)
    return items


def scene_store(out: Path, item_id: str) -> Path:
    """Where :func:`ingest_scene` writes the scene ``item_id`` under work folder ``out``."""
    return Path(out) / "scenes" / f"{item_id}.zarr"


def _stored_fingerprint(store: Path) -> str | None:
    try:
        meta = json.loads((store / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = meta.get("attributes", {}).get("fingerprint")
    return str(value) if value else None


def ingest_scene(
    item: dict[str, Any],
    variables: Sequence[str],
    out: Path,
    *,
    chunks: dict[str, int] | None = None,
    scheduler: SceneScheduler = "threads",
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
    label_variables: Sequence[str] = (),
) -> dict[str, Any]:
    """Write one scene like a run's cube as ``scenes/<item_id>.zarr``, atomically.

    The scene goes through :func:`~eoforge.cube.build.write_cube`, the run's own ingest: the
    area of interest bounds what is loaded, ``cube`` sets the grid (resolution, CRS,
    resampling, chunks) and the units (scale/offset harmonised), and ``label_variables`` are
    class rasters (nearest, never harmonised). The store holds one group, the scene's tile
    (open it with :func:`open_scene`). An item whose footprint misses ``aoi`` is skipped and
    nothing is written. A store already holding the same inputs (same item, variables, grid
    and area) is kept, so a re-run after a failure only does the missing scenes.

    Args:
        item: the scene's STAC item.
        variables: asset keys to load (bands and label).
        out: work folder.
        chunks: spatial chunk edge override (``x``/``y`` of the Dask spec's chunks); default
            the cube spec's chunk.
        scheduler: Dask scheduler used *inside* this scene (see ``DaskSpec.scene_scheduler``).
        cube: grid and units (default :class:`~eoforge.config.CubeSpec`).
        aoi: area of interest, a lon/lat GeoJSON geometry (None: the whole scene).
        label_variables: which of ``variables`` are class rasters.

    Returns:
        ``{"item_id", "uri", "shape" (time, y, x), "seconds", "skipped"}`` (``uri`` None and
        ``reason`` set when the item misses the area).

    Raises:
        InputError: a bad item or a missing source raster.
        TransientError: reading or writing failed in a way that may pass.
    """
    import hashlib

    import dask
    import shapely.geometry

    from eoforge.cube.build import write_cube
    from eoforge.stac.aoi import items_meeting

    t0 = time.perf_counter()
    item_id = _check_id(item)
    target = scene_store(out, item_id)
    area = shapely.geometry.shape(aoi) if aoi is not None else None
    if area is not None and not items_meeting([item], area):
        return {
            "item_id": item_id,
            "uri": None,
            "shape": [],
            "seconds": time.perf_counter() - t0,
            "skipped": True,
            "reason": "the item's footprint misses the area of interest",
        }
    grid = _scene_grid(cube, chunks)
    h = hashlib.sha256(cube_fingerprint([item], variables).encode())
    h.update(grid.fingerprint().encode())
    h.update(area.wkb_hex.encode() if area is not None else b"")
    h.update("|".join(label_variables).encode())
    fingerprint = h.hexdigest()
    if _stored_fingerprint(target) == fingerprint:
        ds = open_scene(out, item_id)
        return {
            "item_id": item_id,
            "uri": str(target),
            "shape": [int(ds.sizes["time"]), int(ds.sizes["y"]), int(ds.sizes["x"])],
            "seconds": time.perf_counter() - t0,
            "skipped": True,
        }
    tile = item_tile(item)
    with dask.config.set(scheduler=scheduler):
        info = write_cube(
            [item],
            list(variables),
            target,
            grid,
            area,
            label_variables=tuple(label_variables),
            attrs={"fingerprint": fingerprint, "tile": tile},
        )
    shape = list(info.shape[tile])
    return {
        "item_id": item_id,
        "uri": str(target),
        "shape": shape,
        "seconds": time.perf_counter() - t0,
        "skipped": False,
    }


def _scene_grid(cube: CubeSpec | None, chunks: dict[str, int] | None) -> CubeSpec:
    grid = cube or CubeSpec.model_validate({})
    spatial = [int(v) for k, v in (chunks or {}).items() if k in ("x", "y")]
    if spatial:
        grid = grid.model_copy(update={"chunk": min(spatial)})
    return grid


def open_scene(out: Path, item_id: str) -> xr.Dataset:
    """The scene :func:`ingest_scene` wrote for ``item_id`` under ``out``, lazily.

    Raises:
        InputError: no such scene store.
    """
    import xarray as xr

    target = scene_store(out, item_id)
    if not (target / "zarr.json").is_file():
        raise InputError(f"scene store '{target}' does not exist; run the scale ingest first.")
    tile = json.loads((target / "zarr.json").read_text())["attributes"].get("tile")
    ds: xr.Dataset = xr.open_zarr(target, group=tile, consolidated=False)
    return ds


def ingest_batch(
    batch_uri: str,
    variables: Sequence[str],
    out: str | Path,
    *,
    chunks: dict[str, int] | None = None,
    scheduler: SceneScheduler = "threads",
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
    label_variables: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """:func:`ingest_scene` for every item of one batch file; one result per scene."""
    return [
        ingest_scene(
            it,
            variables,
            Path(out),
            chunks=chunks,
            scheduler=scheduler,
            cube=cube,
            aoi=aoi,
            label_variables=label_variables,
        )
        for it in read_batch(batch_uri)
    ]


@functools.lru_cache(maxsize=4)
def _session(onnx_path: str, threads: int | None, backend: str, mtime_ns: int) -> Any:
    # One session per model file and worker process: opening costs ~0.1 s, a scene ~1 s.
    from eoforge.export.torch_session import open_predictor

    spec = InferSpec.model_validate({"threads": threads, "backend": backend})
    return open_predictor(Path(onnx_path), spec)


def infer_scene(
    item: dict[str, Any],
    onnx_path: Path,
    out: Path,
    *,
    bands: Sequence[str],
    classes: Sequence[str],
    spec: InferSpec,
    model_href: str | None = None,
    chunks: dict[str, int] | None = None,
    scheduler: SceneScheduler = "threads",
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict one scene from its STAC item with ONNX Runtime, through the run's own path.

    The scene is ingested like a run's cube (:func:`~eoforge.cube.build.write_cube`: the area of
    interest, the grid and the units of ``cube``, chunk by chunk) into a hidden staging store
    under ``out/scenes``, checked against the units the model was trained on (``model.json``
    next to the model, when there is one), streamed window strip by strip into the COG, and the
    staging store removed. Memory is bounded by the cube's chunks and the windows, not the scene.

    Writes ``predictions/<item_id>.tif`` (COG) and ``predictions/<item_id>.json`` (its STAC item,
    ``derived_from`` the scene), both atomically. An item whose footprint misses ``aoi`` is
    skipped (``"skipped": true``), never an error.

    Args:
        item: the scene's STAC item.
        onnx_path: exported model (input ``image`` in the cube's units, output ``logits``).
        out: work folder.
        bands: model input asset keys, in the model's order.
        classes: class names, index = class value.
        spec: sliding window, overlap, batch size and ORT threads.
        model_href: href of the model's STAC item, recorded as ``derived_from``.
        chunks: odc-stac chunks (e.g. ``DaskSpec.chunks``); their ``x`` / ``y`` edge sets the
            staging cube's chunk (default ``cube.chunk``).
        scheduler: Dask scheduler that reads this scene (never the distributed client of a
            worker the task may run on: a task that submits to its own cluster can deadlock).
        cube: resolution, CRS, resampling, chunking and units (default :class:`CubeSpec`).
        aoi: area of interest, a lon/lat GeoJSON geometry (None: the whole scene).

    Returns:
        ``{"item_id", "cog", "item", "shape" (y, x), "seconds", "skipped"}``.

    Raises:
        InputError: a bad item, model, missing raster, or bands in other units than the model's.
        TransientError: reading failed in a way that may pass.
    """
    import shutil

    import dask
    import shapely.geometry
    import zarr

    from eoforge.cube.build import write_cube
    from eoforge.export.torch_session import runtime_of
    from eoforge.inference.drift import drift_scores, item_summary, load_reference
    from eoforge.inference.drift_scene import TimedProfile
    from eoforge.inference.item import prediction_item
    from eoforge.inference.predict import predict_to_cog
    from eoforge.inference.scene_io import ChunkRowReader
    from eoforge.inference.uncertainty import add_uncertainty_asset
    from eoforge.io.atomic import staging_path, write_json_atomic
    from eoforge.runs.stages_model import check_units, trained_units
    from eoforge.stac.aoi import items_meeting

    t0 = time.perf_counter()
    item_id = _check_id(item)
    model = Path(onnx_path)
    if not model.is_file():
        raise InputError(f"ONNX model '{model}' does not exist; run the export stage first.")
    area = shapely.geometry.shape(aoi) if aoi is not None else None
    if area is not None and not items_meeting([item], area):
        return {"item_id": item_id, "skipped": True, "seconds": time.perf_counter() - t0}
    grid = _scene_grid(cube, chunks)
    session = _session(str(model.resolve()), spec.threads, spec.backend, model.stat().st_mtime_ns)
    staging = staging_path(scene_store(out, item_id))
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        with dask.config.set(scheduler=scheduler):
            info = write_cube([item], list(bands), staging, grid, area)
        (tile,) = info.tiles
        group = zarr.open_group(str(staging), mode="r")[tile]
        assert isinstance(group, zarr.Group)
        attrs: dict[str, Any] = dict(group.attrs)
        check_units(trained_units(model.parent), dict(attrs.get("units") or {}), bands, tile)
        reader = ChunkRowReader([group[b] for b in bands], 0)
        _, height, width = reader.shape
        crs, transform = str(attrs["crs"]), tuple(float(v) for v in attrs["transform"][:6])
        tif = Path(out) / "predictions" / f"{item_id}.tif"
        unc = Path(out) / "uncertainty" / f"{item_id}.tif"
        reference = load_reference(model.parent)
        profiler = None if reference is None else TimedProfile(bands, classes)
        predict_to_cog(
            session, reader, spec, tif, crs, transform, uncertainty_tif=unc,
            rows_sink=None if profiler is None else profiler.add,
        )  # fmt: skip
        drift = None
        if profiler is not None and reference is not None:  # profiled as the rows were written
            profile = profiler.profile()
            drift = item_summary(profile, drift_scores(profile, reference))
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # created above by this call
    stac_item = prediction_item(tif, item, classes, model_href, crs, transform, (height, width))
    add_uncertainty_asset(stac_item, unc, f"../uncertainty/{unc.name}")
    stac_item["properties"]["eoforge:precision"] = spec.precision
    stac_item["properties"]["eoforge:runtime"] = runtime_of(session)
    if drift is not None:
        stac_item["properties"]["eoforge:drift"] = drift
    item_path = tif.with_suffix(".json")
    write_json_atomic(item_path, stac_item)
    return {
        "item_id": item_id,
        "cog": str(tif),
        "item": str(item_path),
        "shape": [height, width],
        "seconds": time.perf_counter() - t0,
        "skipped": False,
        "drift": drift["scores"] if drift is not None else None,
    }


def infer_batch(
    batch_uri: str,
    onnx_path: str | Path,
    out: str | Path,
    *,
    bands: Sequence[str],
    classes: Sequence[str],
    spec: InferSpec,
    model_href: str | None = None,
    chunks: dict[str, int] | None = None,
    scheduler: SceneScheduler = "threads",
    cube: CubeSpec | None = None,
    aoi: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`infer_scene` for every item of one batch file; one result per scene."""
    return [
        infer_scene(
            it,
            Path(onnx_path),
            Path(out),
            bands=bands,
            classes=classes,
            spec=spec,
            model_href=model_href,
            chunks=chunks,
            scheduler=scheduler,
            cube=cube,
            aoi=aoi,
        )
        for it in read_batch(batch_uri)
    ]


BatchFn = Callable[[str], list[dict[str, Any]]]


def run_serial(fn: BatchFn, batches: Sequence[str]) -> list[dict[str, Any]]:
    """Run ``fn`` on every batch in this process, one after the other (the reference path)."""
    return [r for b in batches for r in fn(b)]


def run_on_dask(client: Client, fn: BatchFn, batches: Sequence[str]) -> list[dict[str, Any]]:
    """Run ``fn`` on every batch as one Dask task per batch; results in batch order.

    The first failure is raised (with its own type) after the other tasks are cancelled.
    """
    futures = client.map(fn, list(batches), pure=False)
    try:
        results: list[list[dict[str, Any]]] = client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
    return [r for batch in results for r in batch]
