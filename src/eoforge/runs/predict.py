"""Apply a trained model anywhere: search, ingest the area of interest, predict every item.

``eoforge predict --model MODEL_DIR --config SPEC.yaml --out DIR`` runs this: the spec's
``stac`` section says where (catalog, AOI, dates) and ``cube`` / ``infer`` how; the model says
what (its bands and classes win over the spec's). Nothing is trained. Each item gets a COG and
a STAC item, streamed window by window from the cube (memory bounded by the window), in a run
folder published atomically with a ``provenance.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def run_predict(
    spec: RunSpec,
    model_dir: Path,
    out: Path,
    store: Path,
    api_url: str | None = None,
) -> dict[str, Any]:
    """Predict every item the spec's search returns (over its AOI) with the model in
    ``model_dir``; publish the predictions as the run folder ``out``.

    Returns:
        ``{"search", "ingest", "infer"}`` stage results.

    Raises:
        InputError: a bad model folder, spec or search.
    """
    from eoforge.cube.build import list_tiles, open_tile
    from eoforge.inference.catalog import write_predictions_catalog
    from eoforge.runs.pipeline import run_context
    from eoforge.runs.progress import timed_stage
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        stac_item_records,
        write_provenance,
    )
    from eoforge.runs.stages_data import stac_endpoint, stage_ingest, stage_search
    from eoforge.runs.stages_model import stage_infer

    spec = model_spec(spec, Path(model_dir))
    store_s = str(Path(store).resolve())
    results: dict[str, Any] = {}

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return timed_stage(name, fn, results)

    with stac_endpoint(spec, api_url) as url, run_context(out) as run_dir:
        s = timed("search", lambda: stage_search(spec, url, run_dir))
        c = timed("ingest", lambda: stage_ingest(spec, s["items_uri"], store_s, s["keys"]["cube"]))
        cube = Path(c["cube_uri"])
        in_cube = [
            str(i) for tile in list_tiles(cube) for i in open_tile(cube, tile)["item_id"].values
        ]
        timed(
            "infer",
            lambda: stage_infer(
                spec, str(model_dir), str(cube), s["items_uri"], str(run_dir), in_cube
            ),
        )
        write_predictions_catalog(run_dir)  # the run folder is a static STAC catalog
        items = json.loads(Path(s["items_uri"]).read_text())["features"]
        write_provenance(
            run_dir / "provenance.json",
            {
                "eoforge_run": "predict",
                "spec_fingerprint": spec.fingerprint(),
                "parameters": spec.model_dump(mode="json"),
                "model_dir": str(Path(model_dir).resolve()),
                "stac_items": stac_item_records(items, [*spec.stac.bands]),
                "stage_seconds": {k: v["stage_seconds"] for k, v in results.items()},
                "outputs": output_records(run_dir, Path(out)),
                "packages": package_versions(),
                "git": git_revision(),
            },
        )
    return results
