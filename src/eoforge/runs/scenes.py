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

import numpy as np

from eoforge.compute.cluster import (
    DEFAULT_CHUNKS,
    compute_error,
    load_tile_chunked,
    zarr_chunk_encoding,
)
from eoforge.config import InferSpec
from eoforge.cube.build import cube_fingerprint, retry_reads
from eoforge.errors import EoforgeError, InputError
from eoforge.io.atomic import staged_dir
from eoforge.stac.items import item_tile

if TYPE_CHECKING:
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
) -> dict[str, Any]:
    """Load one scene with odc-stac and write it as ``scenes/<item_id>.zarr``, atomically.

    A store already holding the same inputs (same :func:`~eoforge.cube.build.cube_fingerprint` of the
    item and variables) is kept, so a re-run after a failure only does the missing scenes.

    Args:
        item: the scene's STAC item.
        variables: asset keys to load (bands and label).
        out: work folder.
        chunks: odc-stac chunks (default :data:`~eoforge.compute.cluster.DEFAULT_CHUNKS`); the
            Zarr chunks follow them.
        scheduler: Dask scheduler used *inside* this scene (see ``DaskSpec.scene_scheduler``).

    Returns:
        ``{"item_id", "uri", "shape" (time, y, x), "seconds", "skipped"}``.

    Raises:
        InputError: a bad item or a missing source raster.
        TransientError: reading or writing failed in a way that may pass.
    """
    import dask

    t0 = time.perf_counter()
    item_id = _check_id(item)
    target = scene_store(out, item_id)
    fingerprint = cube_fingerprint([item], variables)
    if _stored_fingerprint(target) == fingerprint:
        meta = json.loads((target / "zarr.json").read_text())["attributes"]
        return {
            "item_id": item_id,
            "uri": str(target),
            "shape": list(meta.get("shape", [])),
            "seconds": time.perf_counter() - t0,
            "skipped": True,
        }
    ds = load_tile_chunked([item], variables, chunks or DEFAULT_CHUNKS)
    shape = [int(ds.sizes["time"]), int(ds.sizes["y"]), int(ds.sizes["x"])]
    ds.attrs.update(tile=item_tile(item), fingerprint=fingerprint, shape=shape)
    ds = ds.drop_vars("spatial_ref", errors="ignore")
    encoding = zarr_chunk_encoding(ds)
    with staged_dir(target) as staging, dask.config.set(scheduler=scheduler):
        error: EoforgeError | None = None
        try:
            ds.to_zarr(staging, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        except Exception as exc:
            error = compute_error(exc, f"scene '{item_id}'")
            if error is None:
                raise
        if error is not None:
            raise error
    return {
        "item_id": item_id,
        "uri": str(target),
        "shape": shape,
        "seconds": time.perf_counter() - t0,
        "skipped": False,
    }


def ingest_batch(
    batch_uri: str,
    variables: Sequence[str],
    out: str | Path,
    *,
    chunks: dict[str, int] | None = None,
    scheduler: SceneScheduler = "threads",
) -> list[dict[str, Any]]:
    """:func:`ingest_scene` for every item of one batch file; one result per scene."""
    return [
        ingest_scene(it, variables, Path(out), chunks=chunks, scheduler=scheduler)
        for it in read_batch(batch_uri)
    ]


@functools.lru_cache(maxsize=4)
def _session(onnx_path: str, threads: int | None, mtime_ns: int) -> Any:
    # One session per model file and worker process: opening costs ~0.1 s, a scene ~1 s.
    from eoforge.inference.session import open_session

    return open_session(Path(onnx_path), threads)


def _first_slice(ds: Any, band: str) -> np.ndarray[Any, Any]:
    return np.asarray(ds[band].isel(time=0).values)


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
) -> dict[str, Any]:
    """Predict one scene straight from its STAC item (odc-stac) with ONNX Runtime.

    Writes ``predictions/<item_id>.tif`` (COG) and ``predictions/<item_id>.json`` (its STAC item,
    ``derived_from`` the scene), both atomically.

    Args:
        item: the scene's STAC item.
        onnx_path: exported model (input ``image`` raw DN, output ``logits``).
        out: work folder.
        bands: model input asset keys, in the model's order.
        classes: class names, index = class value.
        spec: sliding window, overlap, batch size and ORT threads.
        model_href: href of the model's STAC item, recorded as ``derived_from``.
        chunks: odc-stac chunks (default :data:`~eoforge.compute.cluster.DEFAULT_CHUNKS`).
        scheduler: Dask scheduler used to read this scene.

    Returns:
        ``{"item_id", "cog", "item", "shape" (y, x), "seconds"}``.

    Raises:
        InputError: a bad item, model or missing raster.
        TransientError: reading failed in a way that may pass.
    """
    import dask

    from eoforge.inference.item import prediction_item
    from eoforge.inference.predict import predict_to_cog
    from eoforge.inference.scene_io import ArrayReader
    from eoforge.inference.uncertainty import add_uncertainty_asset
    from eoforge.io.atomic import write_json_atomic

    t0 = time.perf_counter()
    item_id = _check_id(item)
    model = Path(onnx_path)
    if not model.is_file():
        raise InputError(f"ONNX model '{model}' does not exist; run the export stage first.")
    session = _session(str(model.resolve()), spec.threads, model.stat().st_mtime_ns)
    ds = load_tile_chunked([item], bands, chunks or DEFAULT_CHUNKS)
    error: EoforgeError | None = None
    with dask.config.set(scheduler=scheduler):
        try:
            arr = np.stack(
                [
                    retry_reads(
                        functools.partial(_first_slice, ds, b), f"band '{b}' of scene '{item_id}'"
                    )
                    for b in bands
                ]
            )
        except Exception as exc:
            error = compute_error(exc, f"scene '{item_id}'")
            if error is None:
                raise
    if error is not None:
        raise error
    crs, transform = str(ds.attrs["crs"]), tuple(float(v) for v in ds.attrs["transform"])
    tif = Path(out) / "predictions" / f"{item_id}.tif"
    unc = Path(out) / "uncertainty" / f"{item_id}.tif"
    predict_to_cog(session, ArrayReader(arr), spec, tif, crs, transform, uncertainty_tif=unc)
    shape = (int(arr.shape[1]), int(arr.shape[2]))
    stac_item = prediction_item(tif, item, classes, model_href, crs, transform, shape)
    add_uncertainty_asset(stac_item, unc, f"../uncertainty/{unc.name}")
    item_path = tif.with_suffix(".json")
    write_json_atomic(item_path, stac_item)
    return {
        "item_id": item_id,
        "cog": str(tif),
        "item": str(item_path),
        "shape": list(shape),
        "seconds": time.perf_counter() - t0,
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
