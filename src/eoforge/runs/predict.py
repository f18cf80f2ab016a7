"""Apply a trained model anywhere: search, ingest the area of interest, predict every item.

``eoforge predict --model MODEL_DIR --config SPEC.yaml --out DIR`` runs this: the spec's
``stac`` section says where (catalog, AOI, dates) and ``cube`` / ``infer`` how; the model says
what (its bands and classes win over the spec's). Nothing is trained. Each item gets a COG and
a STAC item, streamed window by window from the cube (memory bounded by the window), in a run
folder published atomically with a ``provenance.json``. The model folder and the run folder may
be object-store URIs (``s3://bucket/prefix``, :mod:`eoforge.runs.remote`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eoforge.config import RunSpec
from eoforge.errors import InputError

__all__ = ["model_spec", "run_predict"]


def model_spec(spec: RunSpec, model_dir: Path) -> RunSpec:
    """``spec`` with the bands and classes the model in ``model_dir`` was trained on.

    Raises:
        InputError: ``model_dir`` is not an exported eoforge model folder.
    """
    model_dir = Path(model_dir)
    missing = [n for n in ("model.onnx", "model.json") if not (model_dir / n).is_file()]
    if missing:
        raise InputError(
            f"model folder '{model_dir}' lacks {missing}; pass the `model/` folder of an eoforge "
            "run (or a stored model) that has an exported ONNX model."
        )
    try:
        config = json.loads((model_dir / "model.json").read_text())
        bands, classes = config["bands"], config["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"'{model_dir / 'model.json'}' is not an eoforge model config ({exc}); re-export it."
        ) from exc
    stac = spec.stac.model_copy(update={"bands": tuple(bands)})
    labels = spec.labels.model_copy(update={"classes": tuple(classes), "scl_groups": {}})
    return spec.model_copy(update={"stac": stac, "labels": labels})


@contextlib.contextmanager
def _places(model: str | Path, out: str | Path) -> Iterator[tuple[Path, Path]]:
    """(local model folder, local run folder) for a model and run folder, each local or on an
    object store; the run folder is published as ``out`` only if the block succeeds."""
    from eoforge.io.stores import is_remote
    from eoforge.runs.pipeline import run_context
    from eoforge.runs.remote import fetched_model, remote_run

    with contextlib.ExitStack() as stack:
        if is_remote(out):
            run_dir = stack.enter_context(remote_run(str(out).rstrip("/")))
        else:
            run_dir = stack.enter_context(run_context(Path(out)))
        local = stack.enter_context(fetched_model(str(model))) if is_remote(model) else model
        yield Path(local), run_dir


def run_predict(
    spec: RunSpec,
    model_dir: str | Path,
    out: str | Path,
    store: Path,
    api_url: str | None = None,
) -> dict[str, Any]:
    """Predict every item the spec's search returns (over its AOI) with the model in
    ``model_dir``; publish the predictions as the run folder ``out`` (each a local folder or
    an object-store URI).

    Returns:
        ``{"search", "ingest", "infer"}`` stage results.

    Raises:
        InputError: a bad model folder, spec or search.
    """
    from eoforge.inference.catalog import write_predictions_catalog
    from eoforge.io.stores import is_remote
    from eoforge.runs.progress import timed_stage
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        stac_item_records,
        write_provenance,
    )
    from eoforge.runs.stages_data import stac_endpoint

    store_s = str(Path(store).resolve())
    results: dict[str, Any] = {}

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return timed_stage(name, fn, results)

    final = str(out).rstrip("/") if is_remote(out) else Path(out)
    with _places(model_dir, out) as (local_model, run_dir):
        spec = model_spec(spec, local_model)
        with stac_endpoint(spec, api_url) as url:
            items_uri = _stages(spec, url, local_model, run_dir, store_s, timed)
        write_predictions_catalog(run_dir)  # the run folder is a static STAC catalog
        items = json.loads(items_uri.read_text())["features"]
        write_provenance(
            run_dir / "provenance.json",
            {
                "eoforge_run": "predict",
                "spec_fingerprint": spec.fingerprint(),
                "parameters": spec.model_dump(mode="json"),
                "model_dir": str(model_dir) if is_remote(model_dir) else str(local_model.resolve()),
                "stac_items": stac_item_records(items, [*spec.stac.bands]),
                "stage_seconds": {k: v["stage_seconds"] for k, v in results.items()},
                "inference": _inference_record(results.get("infer", {})),
                "outputs": output_records(run_dir, final),
                "packages": package_versions(),
                "git": git_revision(),
            },
        )
    return results


def _inference_record(infer: dict[str, Any]) -> dict[str, Any]:
    """Where the infer stage's time went: pixels predicted, pixels through the model (the
    overlap's cost), seconds in the model's runs and in drift profiling."""
    keys = ("pixels", "window_pixels", "model_seconds", "drift_seconds", "mpx_per_s")
    return {k: infer[k] for k in keys if k in infer}


def _stages(
    spec: RunSpec,
    url: str,
    model_dir: Path,
    run_dir: Path,
    store: str,
    timed: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]],
) -> Path:
    """Search, ingest and infer into ``run_dir``; the path of the searched items."""
    from eoforge.cube.build import list_tiles, open_tile
    from eoforge.runs.stages_data import stage_ingest, stage_search
    from eoforge.runs.stages_model import stage_infer

    s = timed("search", lambda: stage_search(spec, url, run_dir))
    c = timed("ingest", lambda: stage_ingest(spec, s["items_uri"], store, s["keys"]["cube"]))
    cube = Path(c["cube_uri"])
    in_cube = [str(i) for tile in list_tiles(cube) for i in open_tile(cube, tile)["item_id"].values]
    timed(
        "infer",
        lambda: stage_infer(spec, str(model_dir), str(cube), s["items_uri"], str(run_dir), in_cube),
    )
    return Path(s["items_uri"])
