"""The pipeline's stages as plain functions over URIs (paths), each checked by its data contract.

Expensive, reusable products (cube, chips, model, baseline) live in a content-addressed
*store*: their path is their cache key, derived from what identifies the data (STAC item ids +
``updated``, spec fingerprints), so a rerun with the same inputs finds them and skips the work,
and a changed item or spec recomputes only what depends on it (ADR 0003). Per-run outputs
(predictions, metrics, report, provenance) go to the run directory.

Prefect tasks in ``tasks/`` wrap these one to one; :func:`run_plain` chains them without Prefect
(the reference for measuring orchestration overhead).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.config import RunSpec
from eoforge.errors import InputError, InternalError

__all__ = [
    "check_out_dir",
    "plan_keys",
    "run_context",
    "run_plain",
    "stac_endpoint",
    "stage_baseline",
    "stage_chips",
    "stage_evaluate",
    "stage_infer",
    "stage_ingest",
    "stage_report",
    "stage_search",
    "stage_track",
    "stage_train",
    "store_paths",
    "stored",
]

ITEMS_FILE = "items.json"
#: Bumped whenever a stored product's format or the code producing it changes meaning, so
#: products of older code are never reused (part of every cache key; ADR 0003).
STORE_FORMAT = "eoforge-store/2"


def _h(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def plan_keys(spec: RunSpec, items: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Cache keys of the stored products, from the inputs each one depends on.

    Label files (polygons, points, raster) enter the chips key by the sha256 of their bytes,
    so editing one recomputes the chips and everything downstream (ADR 0006).

    Raises:
        InputError: a label file named in the spec does not exist.
    """
    from eoforge.cube import cube_fingerprint
    from eoforge.label_sources import label_digest

    cube = _h(STORE_FORMAT, cube_fingerprint(items, [*spec.stac.bands, spec.stac.label_asset]))
    labels = label_digest(spec.labels)
    chips = _h(
        cube,
        spec.chips.fingerprint(),
        spec.labels.fingerprint(),
        ",".join(spec.stac.bands),
        *([labels] if labels else []),  # SCL (in the cube) keeps its keys of before ADR 0006
    )
    model = _h(chips, spec.train.fingerprint(), "model")
    baseline = _h(chips, spec.train.fingerprint(), "random-forest")
    return {"cube": cube, "chips": chips, "model": model, "baseline": baseline}


_STORE_LAYOUT = {
    "cube": ("cubes", ".zarr"),
    "chips": ("chips", ".zarr"),
    "model": ("models", ""),
    "baseline": ("baselines", ""),
}


def stored(store: Path | str, kind: str, key: str) -> Path:
    """Where the stored product ``kind`` with cache key ``key`` lives (short keys stay readable)."""
    folder, suffix = _STORE_LAYOUT[kind]
    return Path(store) / folder / f"{key[:24]}{suffix}"


def store_paths(store: Path, keys: dict[str, str]) -> dict[str, Path]:
    """Every stored product's path for a set of cache keys."""
    return {kind: stored(store, kind, keys[kind]) for kind in _STORE_LAYOUT}


def _split_counts(chips: Path) -> dict[str, int]:
    import zarr

    g = zarr.open_group(str(chips), mode="r")
    counts: dict[str, int] = {}
    for name in ("train", "val", "test"):
        if f"{name}/y" in g:
            arr = g[f"{name}/y"]
            assert isinstance(arr, zarr.Array)
            counts[name] = int(arr.shape[0])
    return counts


def _load_items(items_uri: Path) -> list[dict[str, Any]]:
    data = json.loads(Path(items_uri).read_text())
    return list(data["features"])


@contextlib.contextmanager
def stac_endpoint(spec: RunSpec, api_url: str | None = None) -> Iterator[str]:
    """The STAC API to search: ``api_url``, else ``spec.stac.api_url``, else a local rustac
    server over ``spec.stac.catalog_dir`` (stopped on exit)."""
    from eoforge.stac import LocalStacServer, prepare_served_catalog

    url = api_url or spec.stac.api_url
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="eoforge-stac-") as td:
        files = prepare_served_catalog(spec.stac.catalog_dir, Path(td))
        with LocalStacServer(files, log_path=Path(td) / "rustac.log") as server:
            yield server.url


@contextlib.contextmanager
def run_context(out: Path) -> Iterator[Path]:
    """A staging folder for one run, published as ``out`` only if the block succeeds."""
    from eoforge.storage import clean_stale_staging, staged_dir

    out = Path(out).resolve()
    check_out_dir(out)
    clean_stale_staging(out.parent)
    with staged_dir(out) as run_dir:
        yield run_dir


def stage_search(
    spec: RunSpec, api_url: str, run_dir: Path, ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Search the STAC API (optionally only ``ids``), check the items contract, save
    ``items.json`` and plan the cache keys."""
    from eoforge import contracts
    from eoforge.label_sources import label_file_records
    from eoforge.stac import search_items
    from eoforge.storage import write_json_atomic

    items = search_items(spec.stac, api_url, ids)
    result = contracts.enforce(
        "items", contracts.items_table(items, [*spec.stac.bands, spec.stac.label_asset])
    )
    items_uri = Path(run_dir) / ITEMS_FILE
    write_json_atomic(items_uri, {"type": "FeatureCollection", "features": items})
    return {
        "items_uri": str(items_uri),
        "item_ids": [it["id"] for it in items],
        "keys": plan_keys(spec, items),
        "label_files": label_file_records(spec.labels),
        "contract": result.to_dict(),
    }


def stage_ingest(spec: RunSpec, items_uri: str, store: str, key: str) -> dict[str, Any]:
    """Load the items into the stored cube ``key`` (unless it exists) and check the cube contract."""
    from eoforge import contracts
    from eoforge.cube import list_tiles, verify_cube, write_cube

    cube = stored(store, "cube", key)
    reused = cube.exists()
    if reused:
        try:
            verify_cube(cube)
        except InputError:
            reused = False  # torn or modified: rebuilt below (replaced atomically)
    if not reused:
        write_cube(_load_items(Path(items_uri)), [*spec.stac.bands, spec.stac.label_asset], cube)
    result = contracts.enforce(
        "cube", contracts.cube_table(cube, label_variables=(spec.stac.label_asset,))
    )
    return {
        "cube_uri": str(cube),
        "tiles": list_tiles(cube),
        "reused": reused,
        "contract": result.to_dict(),
    }


def stage_chips(spec: RunSpec, cube_uri: str, store: str, key: str) -> dict[str, Any]:
    """Cut the stored chips ``key`` from the cube (unless they exist); check the chips contract."""
    from eoforge import contracts
    from eoforge.chip_index import enforce_chip_index
    from eoforge.chips import build_chips
    from eoforge.label_sources import label_source

    chips = stored(store, "chips", key)
    reused = chips.exists()
    info: dict[str, Any] = {}
    if not reused:
        built = build_chips(
            Path(cube_uri),
            chips,
            spec.chips,
            spec.labels,
            spec.stac.bands,
            spec.stac.label_asset,
            sampling=spec.chips.sampling,
            label_source=label_source(spec),
        )
        info = {
            "rejected": built.rejected,
            "class_counts": built.class_counts,
            "label_source": built.label_source,
        }
    params = {
        "max_nodata_fraction": spec.chips.max_nodata_fraction,
        "min_labelled_fraction": spec.chips.min_labelled_fraction,
    }
    result = contracts.enforce("chips", contracts.chips_table(chips), parameters=params)
    index_result = enforce_chip_index(chips, parameters=params)
    return {
        "chips_uri": str(chips),
        "counts": _split_counts(chips),
        "reused": reused,
        **info,
        "contract": result.to_dict(),
        "index_contract": index_result.to_dict(),
    }


def stage_train(spec: RunSpec, chips_uri: str, store: str, key: str) -> dict[str, Any]:
    """Train, export to ONNX (parity-checked on test chips) and publish the stored model ``key``."""
    from eoforge.chips import read_split
    from eoforge.export import export_onnx
    from eoforge.mlm import MODEL_ITEM_NAME, model_item
    from eoforge.storage import staged_dir, write_json_atomic
    from eoforge.train import train_model

    model_dir = stored(store, "model", key)
    if not model_dir.exists():
        with staged_dir(model_dir) as staging:
            res = train_model(Path(chips_uri), spec.train, staging)
            x, _ = read_split(Path(chips_uri), "test")
            rng = np.random.default_rng(spec.train.seed)
            sample = x[np.sort(rng.choice(len(x), size=min(8, len(x)), replace=False))]
            exp = export_onnx(staging, staging / "model.onnx", sample)
            write_json_atomic(
                staging / MODEL_ITEM_NAME,
                model_item(
                    staging / "model.onnx",
                    staging / "model.json",
                    list(spec.stac.bands),
                    list(spec.labels.classes),
                    weights_path=staging / "model.safetensors",
                    batch_size_suggestion=spec.infer.batch_size,
                ),
            )
            write_json_atomic(
                staging / "training.json",
                {
                    "best_epoch": res.best_epoch,
                    "best_val_miou": res.best_val_miou,
                    "epochs_run": res.epochs_run,
                    "train_seconds": res.seconds,
                    "device": res.device,
                    "amp_dtype": res.amp_dtype,
                    "chip_route": res.chip_route,
                    "steps_per_second": res.steps_per_second,
                    "onnx_opset": exp.opset,
                    "parity_max_abs_diff": exp.max_abs_diff,
                    "parity_samples": exp.n_parity_samples,
                    "onnx_sha256": exp.sha256,
                    "chips_uri": chips_uri,
                    "spec": spec.train.model_dump(mode="json"),
                },
            )
        reused = False
    else:
        reused = True
    summary = json.loads((model_dir / "training.json").read_text())
    return {"model_dir": str(model_dir), "reused": reused, **summary}


def _test_scenes(
    spec: RunSpec, cube_uri: Path, item_ids: Sequence[str] | None = None
) -> list[tuple[str, int, Any]]:
    """(tile, time index, dataset) of the scenes to predict: the test tiles, or the given items."""
    from eoforge.cube import list_tiles, open_tile

    tiles = list(spec.chips.test_tiles) if item_ids is None else list_tiles(cube_uri)
    scenes: list[tuple[str, int, Any]] = []
    for tile in tiles:
        ds = open_tile(cube_uri, tile)
        for t in range(ds.sizes["time"]):
            if item_ids is None or str(ds["item_id"].values[t]) in item_ids:
                scenes.append((tile, t, ds))
    return scenes


def _scene_bands(ds: Any, t: int, bands: Sequence[str]) -> np.ndarray:
    return np.stack([ds[b].isel(time=t).values for b in bands])


def _baseline_predictor(spec: RunSpec, rf: Any, chips: Path, staging: Path) -> Callable[[Any], Any]:
    """sklearn's per-pixel prediction, or (``infer.serve_baseline_onnx``) the forest exported with
    skl2onnx and served through the same ONNX Runtime sliding-window path as the model."""
    from eoforge import baseline

    if not spec.infer.serve_baseline_onnx:
        return lambda bands: baseline.predict_scene(rf, bands)
    from eoforge.baseline_onnx import baseline_config, export_random_forest, per_pixel_spec
    from eoforge.chips import read_split
    from eoforge.infer import open_session, predict_scene
    from eoforge.mlm import model_item
    from eoforge.storage import write_json_atomic

    bands, classes = list(spec.stac.bands), list(spec.labels.classes)
    x, _ = read_split(chips, "test")
    export_random_forest(rf, staging / "baseline.onnx", bands, classes, sample=x[:4])
    write_json_atomic(
        staging / "baseline-item.json",
        model_item(
            staging / "baseline.onnx",
            baseline_config(rf, bands, classes),
            bands,
            classes,
            name="eoforge-random-forest",
        ),
    )
    session = open_session(staging / "baseline.onnx", spec.infer.threads)
    pixel_spec = per_pixel_spec(spec.infer)
    return lambda b: predict_scene(session, b, pixel_spec)


def stage_baseline(
    spec: RunSpec, chips_uri: str, cube_uri: str, store: str, key: str
) -> dict[str, Any]:
    """Fit the per-pixel random forest on the train chips and predict every test scene (stored)."""
    from eoforge.baseline import train_random_forest
    from eoforge.infer import write_prediction
    from eoforge.storage import staged_dir, write_json_atomic

    out = stored(store, "baseline", key)
    reused = out.exists()
    if not reused:
        with staged_dir(out) as staging:
            t0 = time.perf_counter()
            rf = train_random_forest(Path(chips_uri), spec.train)
            fit_s = time.perf_counter() - t0
            predict = _baseline_predictor(spec, rf, Path(chips_uri), staging)
            for _tile, t, ds in _test_scenes(spec, Path(cube_uri)):
                item_id = str(ds["item_id"].values[t])
                pred = predict(_scene_bands(ds, t, spec.stac.bands))
                write_prediction(
                    pred, ds.attrs["crs"], tuple(ds.attrs["transform"]), staging / f"{item_id}.tif"
                )
            write_json_atomic(
                staging / "baseline.json",
                {"fit_seconds": fit_s, "seconds": time.perf_counter() - t0, "chips_uri": chips_uri},
            )
    summary = json.loads((out / "baseline.json").read_text())
    return {"baseline_dir": str(out), "reused": reused, **summary}


def stage_infer(
    spec: RunSpec,
    model_dir: str,
    cube_uri: str,
    items_uri: str,
    run_dir: str,
    item_ids: Sequence[str] | None = None,
    copy_model: bool = True,
) -> dict[str, Any]:
    """Predict scenes with ONNX Runtime; write a COG and a STAC item per scene into the run.

    With ``copy_model`` the model (ONNX, weights, config) is copied into ``run_dir/model`` so
    the run is self-contained; otherwise the prediction items link the model where it is.
    ``item_ids`` limits inference to those items (default: the test tiles). Each file is
    written atomically with deterministic bytes, so concurrent runs on the same item converge.
    """
    from eoforge import contracts
    from eoforge.infer import open_session, predict_scene, prediction_item, write_prediction
    from eoforge.mlm import MODEL_ITEM_NAME, check_model_matches, model_item
    from eoforge.stac import self_href
    from eoforge.storage import clean_stale_staging, staged_dir, write_json_atomic

    run = Path(run_dir)
    clean_stale_staging(run / "predictions")  # leftovers of killed runs; live writers' are kept
    run_model = run / "model"
    if copy_model and Path(model_dir).resolve() != run_model.resolve():
        with staged_dir(run_model) as staging:
            for f in sorted(Path(model_dir).iterdir()):
                if f.is_file():
                    shutil.copy2(f, staging / f.name)
        model_href = "../model/model.onnx"
    else:
        run_model = Path(model_dir)
        model_href = (run_model / "model.onnx").resolve().as_uri()
    item_path = run_model / MODEL_ITEM_NAME
    if item_path.is_file():
        model_desc = json.loads(item_path.read_text())
    else:  # a model stored before model items existed: describe it now
        model_desc = model_item(
            run_model / "model.onnx",
            run_model / "model.json",
            list(spec.stac.bands),
            list(spec.labels.classes),
            weights_path=run_model / "model.safetensors",
        )
        if copy_model:
            write_json_atomic(item_path, model_desc)
    check_model_matches(model_desc, spec.stac.bands)
    session = open_session(run_model / "model.onnx", spec.infer.threads)
    items = {it["id"]: it for it in _load_items(Path(items_uri))}
    written: dict[str, dict[str, str]] = {}
    t0 = time.perf_counter()
    pixels = 0
    scenes = _test_scenes(spec, Path(cube_uri), item_ids)
    if item_ids is not None and len(scenes) < len(set(item_ids)):
        found = {str(ds["item_id"].values[t]) for _, t, ds in scenes}
        raise InputError(
            f"items {sorted(set(item_ids) - found)} are not in cube '{cube_uri}'; ingest them first."
        )
    for _tile, t, ds in scenes:
        item_id = str(ds["item_id"].values[t])
        if item_id not in items:
            raise InputError(f"cube slice '{item_id}' has no STAC item in {items_uri}.")
        pred = predict_scene(session, _scene_bands(ds, t, spec.stac.bands), spec.infer)
        pixels += pred.size
        tif = run / "predictions" / f"{item_id}.tif"
        crs, transform = ds.attrs["crs"], tuple(ds.attrs["transform"])
        write_prediction(pred, crs, transform, tif)
        item = prediction_item(
            tif,
            items[item_id],
            spec.labels.classes,
            model_href.replace("model.onnx", MODEL_ITEM_NAME),
            crs,
            transform,
            pred.shape,
            source_href=self_href(items[item_id]),
            model_name=model_desc["properties"].get("mlm:name"),
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
        "model_dir": model_dir,
        "seconds": seconds,
        "mpx_per_s": pixels / 1e6 / max(seconds, 1e-9),
        "contract": result.to_dict(),
    }


class _TestTruth:
    """Reference labels of the test scenes, from the run's label source.

    SCL is read from the scene itself (as before label sources existed); any other source is
    rasterised once per tile through ``label_tile``, like the chips, with labels under input
    nodata ignored.
    """

    def __init__(self, spec: RunSpec, cube_uri: Path) -> None:
        from eoforge.config import SclLabelsSpec
        from eoforge.label_sources import label_source

        self.spec = spec
        self.cube_uri = cube_uri
        self.source = label_source(spec)
        self.from_scl = isinstance(spec.labels.source, SclLabelsSpec)
        self._tiles: dict[str, NDArray[np.uint8]] = {}

    def __call__(self, tile: str, t: int, ds: Any) -> NDArray[np.uint8]:
        from eoforge.labels import scl_to_classes

        if self.from_scl:
            return scl_to_classes(
                ds[self.spec.stac.label_asset].isel(time=t).values, self.spec.labels
            )
        if tile not in self._tiles:
            self._tiles[tile] = self._label_tile(tile, [str(i) for i in ds["item_id"].values])
        truth: NDArray[np.uint8] = self._tiles[tile][t]
        return truth

    def _label_tile(self, tile: str, item_ids: list[str]) -> NDArray[np.uint8]:
        from eoforge.chips import tile_labels
        from eoforge.cube_tiles import open_cube_tile

        cube_tile = open_cube_tile(str(self.cube_uri), tile)
        if cube_tile.item_ids != item_ids:
            raise InternalError(
                f"tile '{tile}' of cube '{self.cube_uri}' lists its slices in two orders."
            )
        x = np.stack([cube_tile.variable(b) for b in self.spec.stac.bands], axis=1)
        labels = tile_labels(cube_tile, self.source, self.spec.labels, (x == 0).any(axis=1))
        cube_tile.release()
        return labels


def stage_evaluate(spec: RunSpec, cube_uri: str, baseline_dir: str, run_dir: str) -> dict[str, Any]:
    """Score model and baseline on the test scenes against the run's label source; write
    ``metrics.json`` and quicklooks."""
    import rasterio

    from eoforge.evaluate import confusion_matrix, metrics_from_confusion
    from eoforge.report import class_map_png, confusion_png, learning_curves_png, true_colour_png
    from eoforge.storage import write_json_atomic

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
    for n, (tile, t, ds) in enumerate(scenes):
        item_id = str(ds["item_id"].values[t])
        truth = truth_of(tile, t, ds)
        with rasterio.open(run / "predictions" / f"{item_id}.tif") as src:
            pred = src.read(1)
        with rasterio.open(Path(baseline_dir) / f"{item_id}.tif") as src:
            base = src.read(1)
        cm_model += confusion_matrix(truth, pred, k, spec.labels.ignore_index)
        cm_base += confusion_matrix(truth, base, k, spec.labels.ignore_index)
        if n == 0:
            order = [
                spec.stac.bands.index(b) for b in ("red", "green", "blue") if b in spec.stac.bands
            ]
            if len(order) == 3:
                true_colour_png(
                    _scene_bands(ds, t, spec.stac.bands),
                    ql / "true_colour.png",
                    rgb=(order[0], order[1], order[2]),
                )
                images.append((f"True colour, {item_id}", "quicklooks/true_colour.png"))
            class_map_png(truth, names, ql / "label.png", f"Label ({label_title}), {item_id}")
            class_map_png(pred, names, ql / "prediction.png", f"Model prediction, {item_id}")
            class_map_png(base, names, ql / "baseline.png", f"Random forest, {item_id}")
            images += [
                ("Label", "quicklooks/label.png"),
                ("Model prediction", "quicklooks/prediction.png"),
                ("Random forest prediction", "quicklooks/baseline.png"),
            ]
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
    from eoforge.tracking import default_tracking_uri, log_training_run

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
    from eoforge.provenance import (
        git_revision,
        output_records,
        package_versions,
        stac_item_records,
        write_provenance,
    )
    from eoforge.redact import redact_obj
    from eoforge.report import write_report
    from eoforge.storage import sha256_tree, write_json_atomic

    run, final = Path(run_dir), Path(final_dir)
    metrics = results["evaluate"]["metrics"]
    tables: dict[str, list[dict[str, Any]]] = {
        "Stage timings (s)": [
            {
                "stage": k,
                "seconds": round(float(v.get("stage_seconds", 0.0)), 2),
                "reused from store": bool(v.get("reused", False)),
            }
            for k, v in results.items()
        ],
        "Chips": [{"split": k, "chips": v} for k, v in results["chips"]["counts"].items()],
        "ONNX export": [
            {
                "opset": results["train"].get("onnx_opset"),
                "parity max |diff|": results["train"].get("parity_max_abs_diff"),
            }
        ],
    }
    links = {
        "provenance.json": "provenance.json",
        "metrics.json": "metrics.json",
        "model (ONNX)": "model/model.onnx",
    }
    for item_id in sorted(results.get("infer", {}).get("predictions", {})):
        links[f"prediction {item_id}"] = f"predictions/{item_id}.tif"
    write_report(
        run / "report.html",
        "eoforge run report",
        metrics,
        [(c, Path(p)) for c, p in results["evaluate"]["images"]],
        tables,
        links,
    )
    items = _load_items(run / ITEMS_FILE)
    # every stage has read the items: keep them without signed-URL query strings / secrets
    write_json_atomic(
        run / ITEMS_FILE, redact_obj({"type": "FeatureCollection", "features": items})
    )
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
        "metrics": {
            k: metrics[k]
            for k in ("miou", "pixel_accuracy", "baseline_miou", "baseline_pixel_accuracy")
        },
        "training": {k: v for k, v in results["train"].items() if k not in {"spec"}},
        "tracking": {k: v for k, v in results.get("track", {}).items() if k != "stage_seconds"},
        "stored_inputs": stored,
        "outputs": output_records(run, final),
    }
    write_provenance(run / "provenance.json", provenance)
    return {
        "report_uri": str(final / "report.html"),
        "provenance_uri": str(final / "provenance.json"),
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


def run_plain(
    spec: RunSpec,
    out: Path,
    store: Path,
    api_url: str | None = None,
    on_stage: Callable[[str, float], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every stage in order without Prefect and publish the run as ``out``.

    Raises:
        InputError: bad input (e.g. a label file that is missing or does not fit the class
            schema: checked before anything is written).
    """
    from eoforge.label_sources import check_label_source

    check_label_source(spec)
    results: dict[str, dict[str, Any]] = {}
    store_s = str(Path(store).resolve())

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = fn()
        res["stage_seconds"] = time.perf_counter() - t0
        results[name] = res
        if on_stage:
            on_stage(name, res["stage_seconds"])
        return res

    with stac_endpoint(spec, api_url) as url, run_context(out) as run_dir:
        rd = str(run_dir)
        s = timed("search", lambda: stage_search(spec, url, run_dir))
        keys = s["keys"]
        c = timed("ingest", lambda: stage_ingest(spec, s["items_uri"], store_s, keys["cube"]))
        ch = timed("chips", lambda: stage_chips(spec, c["cube_uri"], store_s, keys["chips"]))
        m = timed("train", lambda: stage_train(spec, ch["chips_uri"], store_s, keys["model"]))
        b = timed(
            "baseline",
            lambda: stage_baseline(spec, ch["chips_uri"], c["cube_uri"], store_s, keys["baseline"]),
        )
        timed("infer", lambda: stage_infer(spec, m["model_dir"], c["cube_uri"], s["items_uri"], rd))
        e = timed("evaluate", lambda: stage_evaluate(spec, c["cube_uri"], b["baseline_dir"], rd))
        timed("track", lambda: stage_track(spec, rd, store_s, m, e["metrics"]))
        results["report"] = stage_report(spec, rd, str(Path(out).resolve()), results)
    return results


PRODUCTION_POINTER = "production-model.json"


def promote_model(store: str, model_dir: str, metrics: dict[str, Any], run: str) -> dict[str, Any]:
    """Make ``model_dir`` the store's production model if it beats the random forest on mIoU.

    Inference deployments (scheduled or event-triggered) use the production model.
    """
    from eoforge.storage import write_json_atomic

    better = metrics["miou"] is not None and metrics["miou"] >= (metrics["baseline_miou"] or 0.0)
    decision = {
        "promoted": bool(better),
        "model_dir": model_dir,
        "miou": metrics["miou"],
        "baseline_miou": metrics["baseline_miou"],
        "run": run,
    }
    if better:
        write_json_atomic(Path(store) / PRODUCTION_POINTER, decision)
    return decision


def production_model(store: str) -> str:
    """The store's production model directory.

    Raises:
        InputError: no model was promoted yet.
    """
    pointer = Path(store) / PRODUCTION_POINTER
    if not pointer.is_file():
        raise InputError(
            f"store '{store}' has no production model ({PRODUCTION_POINTER} missing); run the "
            "pipeline (or train deployment) first, or pass model_dir explicitly."
        )
    model_dir = str(json.loads(pointer.read_text())["model_dir"])
    if not (Path(model_dir) / "model.onnx").is_file():
        raise InputError(f"production model '{model_dir}' has no model.onnx; re-run training.")
    return model_dir
