"""Reporting stages: test-scene evaluation, MLflow tracking, HTML report and provenance."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.config import RunSpec
from eoforge.errors import InternalError
from eoforge.runs.stages_data import _load_items
from eoforge.runs.stages_model import _test_scenes
from eoforge.runs.store import ITEMS_FILE

__all__ = [
    "stage_evaluate",
    "stage_report",
    "stage_summary",
    "stage_track",
]


class _TestTruth:
    """Reference labels of the test scenes, from the run's label source.

    SCL is read from the scene itself (as before label sources existed); any other source is
    rasterised once per tile through ``label_tile``, like the chips, with labels under input
    nodata ignored.
    """

    def __init__(self, spec: RunSpec, cube_uri: Path) -> None:
        from eoforge.config import SclLabelsSpec
        from eoforge.labels.sources import label_source

        self.spec = spec
        self.cube_uri = cube_uri
        self.source = label_source(spec.labels, spec.stac.label_asset)
        self.from_scl = isinstance(spec.labels.source, SclLabelsSpec)
        self._tiles: dict[str, NDArray[np.uint8]] = {}

    def __call__(self, tile: str, t: int, ds: Any) -> NDArray[np.uint8]:
        """The truth of a whole scene (tests; evaluation reads it by :meth:`rows`)."""
        from eoforge.cube.tiles import open_cube_tile

        cube_tile = open_cube_tile(str(self.cube_uri), tile)
        if cube_tile.item_ids != [str(i) for i in ds["item_id"].values]:
            raise InternalError(
                f"tile '{tile}' of cube '{self.cube_uri}' lists its slices in two orders."
            )
        return self.rows(cube_tile, t, 0, cube_tile.grid.height)

    def rows(self, cube_tile: Any, t: int, top: int, bottom: int) -> NDArray[np.uint8]:
        """Truth rows ``[top, bottom)`` of slice ``t`` of an open cube tile."""
        from eoforge.labels.classes import scl_to_classes

        if self.from_scl:
            scl = cube_tile.read_rows(self.spec.stac.label_asset, top, bottom, t)
            return scl_to_classes(scl, self.spec.labels)
        tile = cube_tile.grid.tile
        if tile not in self._tiles:
            self._tiles = {tile: self._label_tile(tile)}  # one tile's labels held at a time
        truth: NDArray[np.uint8] = self._tiles[tile][t, top:bottom]
        return truth

    def _label_tile(self, tile: str) -> NDArray[np.uint8]:
        from eoforge.chips.strips import nodata_mask, tile_labels
        from eoforge.cube.tiles import open_cube_tile

        cube_tile = open_cube_tile(str(self.cube_uri), tile)
        nodata = nodata_mask(cube_tile, self.spec.stac.bands)
        return tile_labels(cube_tile, self.source, self.spec.labels, nodata)


def stage_evaluate(spec: RunSpec, cube_uri: str, baseline_dir: str, run_dir: str) -> dict[str, Any]:
    """Score model and baseline on the test scenes against the run's label source; write
    ``metrics.json`` and quicklooks."""
    from eoforge.cube.tiles import open_cube_tile
    from eoforge.io.atomic import write_json_atomic
    from eoforge.runs.report import (
        class_map_png,
        confusion_png,
        learning_curves_png,
        true_colour_png,
        uncertainty_png,
    )
    from eoforge.runs.scoring import score_scene
    from eoforge.training.metrics import metrics_from_confusion

    run = Path(run_dir)
    k = len(spec.labels.classes)
    names = list(spec.labels.classes)
    cm_model = np.zeros((k, k), np.int64)
    cm_base = np.zeros((k, k), np.int64)
    ql = run / "quicklooks"
    ql.mkdir(exist_ok=True)
    images: list[tuple[str, str]] = []
    scenes = _test_scenes(spec, Path(cube_uri))
    truth_of = _TestTruth(spec, Path(cube_uri))
    label_title = "grouped SCL" if truth_of.from_scl else spec.labels.source.kind
    rgb_bands = [b for b in ("red", "green", "blue") if b in spec.stac.bands]
    for n, (tile, t, ds) in enumerate(scenes):
        item_id = str(ds["item_id"].values[t])
        cube_tile = open_cube_tile(cube_uri, tile)
        if cube_tile.item_ids[t] != item_id:
            raise InternalError(
                f"tile '{tile}' of cube '{cube_uri}' lists its slices in two orders."
            )
        # strip by strip: memory bounded by the cube's chunk rows, not the scene
        score = score_scene(
            cube_tile,
            t,
            functools.partial(truth_of.rows, cube_tile, t),
            run / "predictions" / f"{item_id}.tif",
            Path(baseline_dir) / f"{item_id}.tif",
            k,
            spec.labels.ignore_index,
            rgb_bands if n == 0 and len(rgb_bands) == 3 else None,
        )
        cm_model += score.cm_model
        cm_base += score.cm_base
        if n == 0:
            if score.rgb is not None:
                true_colour_png(score.rgb, ql / "true_colour.png", rgb=(0, 1, 2))
                images.append((f"True colour, {item_id}", "quicklooks/true_colour.png"))
            truth, pred, base = score.truth, score.pred, score.base
            class_map_png(truth, names, ql / "label.png", f"Label ({label_title}), {item_id}")
            class_map_png(pred, names, ql / "prediction.png", f"Model prediction, {item_id}")
            class_map_png(base, names, ql / "baseline.png", f"Random forest, {item_id}")
            images += [
                ("Label", "quicklooks/label.png"),
                ("Model prediction", "quicklooks/prediction.png"),
                ("Random forest prediction", "quicklooks/baseline.png"),
            ]
            unc = run / "uncertainty" / f"{item_id}.tif"
            if unc.is_file():
                import rasterio

                with rasterio.open(unc) as src:  # read at picture size (overviews), not whole
                    step = max(1, -(-max(src.shape) // 1024))
                    shape = (-(-src.height // step), -(-src.width // step))
                    entropy = src.read(1, out_shape=shape)
                uncertainty_png(entropy, ql / "uncertainty.png", f"Model uncertainty, {item_id}")
                images.append(("Model uncertainty", "quicklooks/uncertainty.png"))
    confusion_png(cm_model, names, ql / "confusion_model.png", "Model confusion (test tiles)")
    confusion_png(
        cm_base, names, ql / "confusion_baseline.png", "Random forest confusion (test tiles)"
    )
    images += [
        ("Model confusion matrix", "quicklooks/confusion_model.png"),
        ("Random forest confusion matrix", "quicklooks/confusion_baseline.png"),
    ]
    model_json = run / "model" / "model.json"
    if model_json.exists():
        history = json.loads(model_json.read_text()).get("history", [])
        if history:
            learning_curves_png(history, ql / "learning_curves.png")
            images.append(("Learning curves", "quicklooks/learning_curves.png"))
    m = metrics_from_confusion(cm_model, names)
    b = metrics_from_confusion(cm_base, names)
    metrics = {
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "per_class_iou": m["per_class_iou"],
        "baseline_miou": b["miou"],
        "baseline_pixel_accuracy": b["pixel_accuracy"],
        "baseline_per_class_iou": b["per_class_iou"],
        "model": m,
        "baseline": b,
        "classes": names,
        "test_tiles": list(spec.chips.test_tiles),
        "test_scenes": len(scenes),
        "label_source": truth_of.source.describe(),
    }
    write_json_atomic(run / "metrics.json", metrics)
    return {"metrics_uri": str(run / "metrics.json"), "metrics": metrics, "images": images}


def stage_track(
    spec: RunSpec, run_dir: str, store: str, train: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """Record the training run in MLflow (params, curves, test metrics vs baseline, artifacts)."""
    from eoforge.training.tracking import default_tracking_uri, log_training_run

    run = Path(run_dir)
    ql = run / "quicklooks"
    return log_training_run(
        default_tracking_uri(store),
        run_name=f"{Path(train['model_dir']).name}",
        params={
            "train": spec.train.model_dump(mode="json"),
            "chips": spec.chips.model_dump(mode="json"),
            "spec_fingerprint": spec.fingerprint(),
            "reused_model": bool(train.get("reused")),
        },
        model_dir=run / "model",
        metrics={
            k: metrics[k]
            for k in (
                "miou",
                "pixel_accuracy",
                "baseline_miou",
                "baseline_pixel_accuracy",
                "per_class_iou",
            )
        },
        artifacts=[
            run / "model" / "model.onnx",
            ql / "learning_curves.png",
            ql / "confusion_model.png",
            ql / "confusion_baseline.png",
        ],
        tags={
            "model_dir": train["model_dir"],
            "best_epoch": str(train.get("best_epoch")),
            "device": str(train.get("device", "cpu")),
            "amp_dtype": str(train.get("amp_dtype")),
        },
    )


def stage_report(
    spec: RunSpec,
    run_dir: str,
    final_dir: str,
    results: dict[str, dict[str, Any]],
    orchestration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.html`` and then ``provenance.json`` (which hashes every other output)."""
    from eoforge.io.atomic import sha256_tree, write_json_atomic
    from eoforge.io.redact import redact_obj
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        stac_item_records,
        write_provenance,
    )
    from eoforge.runs.report_page import write_run_report

    run, final = Path(run_dir), Path(final_dir)
    metrics = results["evaluate"]["metrics"]
    items = _load_items(run / ITEMS_FILE)
    stored = {
        name: {
            "uri": Path(results[stage][field]).resolve().as_uri(),
            "sha256": sha256_tree(Path(results[stage][field])),
        }
        for name, stage, field in (
            ("cube", "ingest", "cube_uri"),
            ("chips", "chips", "chips_uri"),
            ("model", "train", "model_dir"),
            ("baseline", "baseline", "baseline_dir"),
        )
        if stage in results
    }
    provenance = {
        "eoforge_run": final.name,
        "parameters": spec.model_dump(mode="json"),
        "spec_fingerprint": spec.fingerprint(),
        "cache_keys": results["search"].get("keys"),
        "label_files": results["search"].get("label_files", []),
        "stac_items": stac_item_records(items, (*spec.stac.bands, spec.stac.label_asset)),
        "packages": package_versions(),
        "git": git_revision(),
        "orchestration": orchestration or {"engine": "plain-python"},
        "contracts": {
            **{r["contract"]["stage"]: r["contract"] for r in results.values() if "contract" in r},
            **(
                {"chip_index": results["chips"]["index_contract"]}
                if "index_contract" in results.get("chips", {})
                else {}
            ),
        },
        "stage_seconds": {k: v.get("stage_seconds") for k, v in results.items()},
        "reused_from_store": {
            k: bool(v.get("reused")) for k, v in results.items() if "reused" in v
        },
        "chip_counts": results.get("chips", {}).get("counts", {}),
        "metrics": {
            k: metrics[k]
            for k in ("miou", "pixel_accuracy", "baseline_miou", "baseline_pixel_accuracy")
        },
        "training": {k: v for k, v in results["train"].items() if k not in {"spec"}},
        "tracking": {k: v for k, v in results.get("track", {}).items() if k != "stage_seconds"},
        "stored_inputs": stored,
    }
    # the report shows what provenance records (so `eoforge report` can rebuild it from the
    # folder), and provenance then hashes the report with every other output
    write_run_report(
        run, metrics, redact_obj(json.loads(json.dumps(provenance, default=str))), items
    )
    # every stage has read the items: keep them without signed-URL query strings / secrets
    write_json_atomic(
        run / ITEMS_FILE, redact_obj({"type": "FeatureCollection", "features": items})
    )
    provenance["outputs"] = output_records(run, final)
    write_provenance(run / "provenance.json", provenance)
    return {
        "report_uri": str(final / "report.html"),
        "provenance_uri": str(final / "provenance.json"),
    }


def stage_summary(
    spec: RunSpec,
    run_dir: str,
    final_dir: str,
    results: dict[str, dict[str, Any]],
    orchestration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``provenance.json`` for a run of selected stages (no report: it needs the
    evaluation): the stages run, their products, timings and contracts."""
    from eoforge.io.redact import redact_obj
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        write_provenance,
    )

    run, final = Path(run_dir), Path(final_dir)

    def published(uri: str) -> str:  # a file of the run folder, where it will be
        p = Path(uri)
        return str(final / p.relative_to(run)) if p.is_relative_to(run) else uri

    products = {
        name: published(results[stage][field])
        for name, stage, field in (
            ("items", "search", "items_uri"),
            ("cube", "ingest", "cube_uri"),
            ("chips", "chips", "chips_uri"),
            ("model", "train", "model_dir"),
            ("baseline", "baseline", "baseline_dir"),
        )
        if stage in results
    }
    record = {
        "eoforge_run": final.name,
        "stages": list(results),
        "parameters": spec.model_dump(mode="json"),
        "spec_fingerprint": spec.fingerprint(),
        "cache_keys": results.get("search", {}).get("keys"),
        "products": products,
        "packages": package_versions(),
        "git": git_revision(),
        "orchestration": orchestration or {"engine": "plain-python"},
        "contracts": {
            r["contract"]["stage"]: r["contract"] for r in results.values() if "contract" in r
        },
        "stage_seconds": {k: v.get("stage_seconds") for k, v in results.items()},
        "reused_from_store": {
            k: bool(v.get("reused")) for k, v in results.items() if "reused" in v
        },
        "chip_counts": results.get("chips", {}).get("counts", {}),
        "outputs": output_records(run, final),
    }
    write_provenance(run / "provenance.json", redact_obj(record))
    return {"provenance_uri": str(final / "provenance.json"), "products": products}
