"""The pipeline's stages as plain functions over URIs (paths), each checked by its data contract.

Prefect tasks in ``tasks/`` wrap these one to one; :func:`run_plain` chains them without Prefect
(the reference for measuring orchestration overhead). Every stage reads its inputs from the run
directory and returns a JSON-serialisable summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.config import RunSpec
from eoforge.errors import InputError

__all__ = [
    "run_plain",
    "stage_baseline",
    "stage_chips",
    "stage_evaluate",
    "stage_export",
    "stage_infer",
    "stage_ingest",
    "stage_search",
]

ITEMS_FILE = "items.json"


def _load_items(run_dir: Path) -> list[dict[str, Any]]:
    data = json.loads((run_dir / ITEMS_FILE).read_text())
    return list(data["features"])


def stage_search(spec: RunSpec, api_url: str, run_dir: Path) -> dict[str, Any]:
    """Search the STAC API, check the items contract, and save the items as ``items.json``."""
    from eoforge import contracts
    from eoforge.stac import search_items
    from eoforge.storage import write_json_atomic

    items = search_items(spec.stac, api_url)
    result = contracts.enforce(
        "items", contracts.items_table(items, [*spec.stac.bands, spec.stac.label_asset])
    )
    write_json_atomic(run_dir / ITEMS_FILE, {"type": "FeatureCollection", "features": items})
    return {
        "items_uri": str(run_dir / ITEMS_FILE),
        "item_ids": [it["id"] for it in items],
        "contract": result.to_dict(),
    }


def stage_ingest(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Load the searched items into ``cube.zarr`` (one group per tile) and check the cube contract."""
    from eoforge import contracts
    from eoforge.cube import write_cube

    items = _load_items(run_dir)
    cube = run_dir / "cube.zarr"
    info = write_cube(items, [*spec.stac.bands, spec.stac.label_asset], cube)
    result = contracts.enforce(
        "cube", contracts.cube_table(cube, label_variables=(spec.stac.label_asset,))
    )
    return {
        "cube_uri": str(cube),
        "tiles": info.tiles,
        "fingerprint": info.fingerprint,
        "contract": result.to_dict(),
    }


def stage_chips(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Cut ``chips.zarr`` from the cube and check the chips contract."""
    from eoforge import contracts
    from eoforge.chips import build_chips

    chips = run_dir / "chips.zarr"
    info = build_chips(run_dir / "cube.zarr", chips, spec.chips, spec.labels, spec.stac.bands)
    result = contracts.enforce(
        "chips",
        contracts.chips_table(chips),
        parameters={
            "max_nodata_fraction": spec.chips.max_nodata_fraction,
            "min_labelled_fraction": spec.chips.min_labelled_fraction,
        },
    )
    return {
        "chips_uri": str(chips),
        "counts": info.counts,
        "rejected": info.rejected,
        "class_counts": info.class_counts,
        "contract": result.to_dict(),
    }


def stage_train(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Train the segmentation model on the chips; weights go to ``model/``."""
    from eoforge.train import train_model

    res = train_model(run_dir / "chips.zarr", spec.train, run_dir / "model")
    return {
        "model_dir": str(res.model_dir),
        "best_epoch": res.best_epoch,
        "best_val_miou": res.best_val_miou,
        "epochs_run": res.epochs_run,
        "seconds": res.seconds,
    }


def stage_export(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Export the trained model to ONNX and check parity with torch on held-out test chips."""
    from eoforge.chips import read_split
    from eoforge.export import export_onnx

    x, _ = read_split(run_dir / "chips.zarr", "test")
    rng = np.random.default_rng(spec.train.seed)
    sample = x[rng.choice(len(x), size=min(8, len(x)), replace=False)]
    res = export_onnx(run_dir / "model", run_dir / "model" / "model.onnx", sample)
    return {
        "onnx_uri": str(res.onnx_path),
        "opset": res.opset,
        "parity_max_abs_diff": res.max_abs_diff,
        "parity_samples": res.n_parity_samples,
        "sha256": res.sha256,
    }


def _test_scenes(spec: RunSpec, run_dir: Path) -> list[tuple[str, int, Any]]:
    from eoforge.cube import open_tile

    scenes: list[tuple[str, int, Any]] = []
    for tile in spec.chips.test_tiles:
        ds = open_tile(run_dir / "cube.zarr", tile)
        for t in range(ds.sizes["time"]):
            scenes.append((tile, t, ds))
    return scenes


def _scene_bands(ds: Any, t: int, bands: tuple[str, ...]) -> np.ndarray:
    return np.stack([ds[b].isel(time=t).values for b in bands])


def stage_baseline(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Train the per-pixel random forest on the train chips and predict every test scene."""
    from eoforge.baseline import predict_scene, train_random_forest
    from eoforge.infer import write_prediction

    t0 = time.perf_counter()
    rf = train_random_forest(run_dir / "chips.zarr", spec.train)
    fit_s = time.perf_counter() - t0
    out: dict[str, str] = {}
    for _tile, t, ds in _test_scenes(spec, run_dir):
        item_id = str(ds["item_id"].values[t])
        pred = predict_scene(rf, _scene_bands(ds, t, spec.stac.bands))
        tif = run_dir / "baseline" / f"{item_id}.tif"
        write_prediction(pred, ds.attrs["crs"], tuple(ds.attrs["transform"]), tif)
        out[item_id] = str(tif)
    return {"predictions": out, "fit_seconds": fit_s, "seconds": time.perf_counter() - t0}


def stage_infer(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Predict every test scene with ONNX Runtime; write a COG and a STAC item per scene."""
    from eoforge import contracts
    from eoforge.infer import open_session, predict_scene, prediction_item, write_prediction
    from eoforge.storage import write_json_atomic

    onnx_path = run_dir / "model" / "model.onnx"
    session = open_session(onnx_path, spec.infer.threads)
    items = {it["id"]: it for it in _load_items(run_dir)}
    written: dict[str, dict[str, str]] = {}
    t0 = time.perf_counter()
    pixels = 0
    for _tile, t, ds in _test_scenes(spec, run_dir):
        item_id = str(ds["item_id"].values[t])
        if item_id not in items:
            raise InputError(f"cube slice '{item_id}' has no STAC item in {run_dir / ITEMS_FILE}.")
        bands = _scene_bands(ds, t, spec.stac.bands)
        pred = predict_scene(session, bands, spec.infer)
        pixels += pred.size
        tif = run_dir / "predictions" / f"{item_id}.tif"
        crs, transform = ds.attrs["crs"], tuple(ds.attrs["transform"])
        write_prediction(pred, crs, transform, tif)
        item = prediction_item(
            tif,
            items[item_id],
            spec.labels.classes,
            "../model/model.onnx",
            crs,
            transform,
            pred.shape,
        )
        write_json_atomic(tif.with_suffix(".json"), item)
        written[item_id] = {"cog": str(tif), "item": str(tif.with_suffix(".json"))}
    seconds = time.perf_counter() - t0
    tifs = [Path(v["cog"]) for v in written.values()]
    result = contracts.enforce(
        "predictions", contracts.predictions_table(tifs, len(spec.labels.classes))
    )
    return {
        "predictions": written,
        "seconds": seconds,
        "mpx_per_s": pixels / 1e6 / max(seconds, 1e-9),
        "contract": result.to_dict(),
    }


def stage_evaluate(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Score model and baseline on the test scenes; write ``metrics.json``, quicklooks and report."""
    import rasterio

    from eoforge.evaluate import confusion_matrix, metrics_from_confusion
    from eoforge.labels import scl_to_classes
    from eoforge.report import (
        class_map_png,
        confusion_png,
        learning_curves_png,
        true_colour_png,
    )
    from eoforge.storage import write_json_atomic

    k = len(spec.labels.classes)
    names = list(spec.labels.classes)
    cm_model = np.zeros((k, k), np.int64)
    cm_base = np.zeros((k, k), np.int64)
    ql = run_dir / "quicklooks"
    ql.mkdir(exist_ok=True)
    images: list[tuple[str, Path]] = []
    scenes = _test_scenes(spec, run_dir)
    for n, (_tile, t, ds) in enumerate(scenes):
        item_id = str(ds["item_id"].values[t])
        truth = scl_to_classes(ds[spec.stac.label_asset].isel(time=t).values, spec.labels)
        with rasterio.open(run_dir / "predictions" / f"{item_id}.tif") as src:
            pred = src.read(1)
        with rasterio.open(run_dir / "baseline" / f"{item_id}.tif") as src:
            base = src.read(1)
        cm_model += confusion_matrix(truth, pred, k, spec.labels.ignore_index)
        cm_base += confusion_matrix(truth, base, k, spec.labels.ignore_index)
        if n == 0:
            bands = _scene_bands(ds, t, spec.stac.bands)
            order = [
                spec.stac.bands.index(b) for b in ("red", "green", "blue") if b in spec.stac.bands
            ]
            if len(order) == 3:
                true_colour_png(bands, ql / "true_colour.png", rgb=(order[0], order[1], order[2]))
                images.append((f"True colour, {item_id}", ql / "true_colour.png"))
            class_map_png(truth, names, ql / "label.png", f"Label (grouped SCL), {item_id}")
            class_map_png(pred, names, ql / "prediction.png", f"Model prediction, {item_id}")
            class_map_png(base, names, ql / "baseline.png", f"Random forest, {item_id}")
            images += [
                ("Label", ql / "label.png"),
                ("Model prediction", ql / "prediction.png"),
                ("Random forest prediction", ql / "baseline.png"),
            ]
    confusion_png(cm_model, names, ql / "confusion_model.png", "Model confusion (test tiles)")
    confusion_png(
        cm_base, names, ql / "confusion_baseline.png", "Random forest confusion (test tiles)"
    )
    images += [
        ("Model confusion matrix", ql / "confusion_model.png"),
        ("Random forest confusion matrix", ql / "confusion_baseline.png"),
    ]
    model_json = run_dir / "model" / "model.json"
    if model_json.exists():
        history = json.loads(model_json.read_text()).get("history", [])
        if history:
            learning_curves_png(history, ql / "learning_curves.png")
            images.append(("Learning curves", ql / "learning_curves.png"))
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
        "confusion_matrix": cm_model.tolist(),
        "baseline_confusion_matrix": cm_base.tolist(),
        "classes": names,
        "test_tiles": list(spec.chips.test_tiles),
        "test_scenes": len(scenes),
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    return {
        "metrics_uri": str(run_dir / "metrics.json"),
        "metrics": metrics,
        "images": [(c, str(p)) for c, p in images],
    }


def run_plain(
    spec: RunSpec,
    api_url: str,
    run_dir: Path,
    on_stage: Callable[[str, float], None] | None = None,
    final_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every stage in order without Prefect, then the report; return summaries and timings."""
    results: dict[str, dict[str, Any]] = {}
    stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("search", lambda: stage_search(spec, api_url, run_dir)),
        ("ingest", lambda: stage_ingest(spec, run_dir)),
        ("chips", lambda: stage_chips(spec, run_dir)),
        ("train", lambda: stage_train(spec, run_dir)),
        ("baseline", lambda: stage_baseline(spec, run_dir)),
        ("export", lambda: stage_export(spec, run_dir)),
        ("infer", lambda: stage_infer(spec, run_dir)),
        ("evaluate", lambda: stage_evaluate(spec, run_dir)),
    ]
    for name, fn in stages:
        t0 = time.perf_counter()
        results[name] = fn()
        dt = time.perf_counter() - t0
        results[name]["stage_seconds"] = dt
        if on_stage:
            on_stage(name, dt)
    results["report"] = stage_report(spec, run_dir, final_dir or run_dir, results)
    return results


def stage_report(
    spec: RunSpec,
    run_dir: Path,
    final_dir: Path,
    results: dict[str, dict[str, Any]],
    orchestration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.html`` and then ``provenance.json`` (which hashes every other output)."""
    from eoforge.provenance import git_revision, output_records, package_versions
    from eoforge.report import write_report
    from eoforge.stac import self_href
    from eoforge.storage import write_json_atomic

    metrics = results["evaluate"]["metrics"]
    images = [(c, Path(p)) for c, p in results["evaluate"]["images"]]
    rel_images = [(c, p.relative_to(run_dir) if p.is_absolute() else p) for c, p in images]
    tables: dict[str, list[dict[str, Any]]] = {
        "Stage timings (s)": [
            {"stage": k, "seconds": round(float(v.get("stage_seconds", 0.0)), 2)}
            for k, v in results.items()
        ],
        "Chips": [{"split": k, "chips": v} for k, v in results["chips"]["counts"].items()],
    }
    if "export" in results:
        tables["ONNX export"] = [
            {
                "opset": results["export"]["opset"],
                "parity max |diff|": results["export"]["parity_max_abs_diff"],
            }
        ]
    links = {
        "provenance.json": "provenance.json",
        "metrics.json": "metrics.json",
        "model (ONNX)": "model/model.onnx",
    }
    for item_id in sorted(results.get("infer", {}).get("predictions", {})):
        links[f"prediction {item_id}"] = f"predictions/{item_id}.tif"
    write_report(
        run_dir / "report.html",
        "eoforge run report",
        metrics,
        [(c, Path(p)) for c, p in rel_images],
        tables,
        links,
    )
    items = _load_items(run_dir)
    provenance = {
        "eoforge_run": final_dir.name,
        "parameters": spec.model_dump(mode="json"),
        "spec_fingerprint": spec.fingerprint(),
        "stac_items": [
            {
                "id": it["id"],
                "collection": it.get("collection"),
                "updated": it["properties"].get("updated"),
                "self_href": self_href(it),
                "assets": {
                    k: a["href"]
                    for k, a in it["assets"].items()
                    if k in (*spec.stac.bands, spec.stac.label_asset)
                },
            }
            for it in items
        ],
        "packages": package_versions(),
        "git": git_revision(),
        "orchestration": orchestration or {"engine": "plain-python"},
        "contracts": {
            stage: results[stage]["contract"] for stage in results if "contract" in results[stage]
        },
        "stage_seconds": {k: v.get("stage_seconds") for k, v in results.items()},
        "metrics": {
            k: metrics[k]
            for k in ("miou", "pixel_accuracy", "baseline_miou", "baseline_pixel_accuracy")
        },
        "export": results.get("export"),
        "outputs": output_records(run_dir, final_dir),
    }
    write_json_atomic(run_dir / "provenance.json", provenance)
    return {
        "report_uri": str(final_dir / "report.html"),
        "provenance_uri": str(final_dir / "provenance.json"),
    }


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that holds something other than a previous eoforge run.

    A previous run (it has ``provenance.json``) is replaced only when the new run succeeds.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"output path '{out}' is a file; pass a folder path to --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / "provenance.json").exists():
        raise InputError(
            f"output folder '{out}' is not empty and is not an eoforge run; eoforge will not "
            "overwrite it. Pass a new or empty folder to --out."
        )
