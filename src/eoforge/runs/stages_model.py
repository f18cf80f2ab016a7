"""Model stages: train + ONNX export (stored), random-forest baseline (stored), scene inference."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.config import RunSpec
from eoforge.errors import InputError
from eoforge.runs.stages_data import _load_items
from eoforge.runs.store import stored

__all__ = [
    "stage_baseline",
    "stage_infer",
    "stage_train",
]


def stage_train(spec: RunSpec, chips_uri: str, store: str, key: str) -> dict[str, Any]:
    """Train, export to ONNX (parity-checked on test chips) and publish the stored model ``key``."""
    from eoforge.chips.cut import read_split
    from eoforge.export.mlm import MODEL_ITEM_NAME, model_item
    from eoforge.export.onnx import export_onnx
    from eoforge.export.quantize import with_int8_asset
    from eoforge.inference.drift import REFERENCE_NAME
    from eoforge.io.atomic import staged_dir, write_json_atomic
    from eoforge.runs.integrity import reusable_model
    from eoforge.training.train import train_model

    model_dir = stored(store, "model", key)
    if not reusable_model(model_dir):  # a damaged stored model is quarantined and rebuilt
        with staged_dir(model_dir) as staging:
            res = train_model(Path(chips_uri), spec.train, staging)
            x, _ = read_split(Path(chips_uri), "test")
            rng = np.random.default_rng(spec.train.seed)
            sample = x[np.sort(rng.choice(len(x), size=min(8, len(x)), replace=False))]
            exp = export_onnx(staging, staging / "model.onnx", sample)
            write_json_atomic(
                staging / REFERENCE_NAME,
                _drift_reference(spec, Path(chips_uri), staging / "model.onnx"),
            )
            int8 = _quantize(spec, Path(chips_uri), staging)
            item = model_item(
                staging / "model.onnx",
                staging / "model.json",
                list(spec.stac.bands),
                list(spec.labels.classes),
                weights_path=staging / "model.safetensors",
                batch_size_suggestion=spec.infer.batch_size,
            )
            write_json_atomic(staging / MODEL_ITEM_NAME, with_int8_asset(item, int8))
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
                    "schedule_clock_from_epoch": res.schedule_clock_from_epoch,
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


def _quantize(spec: RunSpec, chips: Path, model_dir: Path) -> dict[str, Any]:
    """The int8 model next to model.onnx, calibrated on a seeded sample of training chips."""
    from eoforge.chips.cut import read_split
    from eoforge.export.quantize import INT8_MODEL_NAME, quantize_int8

    x, _ = read_split(chips, "train")
    rng = np.random.default_rng(spec.train.seed)
    sample = x[np.sort(rng.choice(len(x), size=min(32, len(x)), replace=False))]
    return quantize_int8(model_dir / "model.onnx", model_dir / INT8_MODEL_NAME, sample)


def _drift_reference(spec: RunSpec, chips: Path, onnx_path: Path) -> dict[str, Any]:
    """The model's drift reference: its training chips, grouped by scene, and its predictions."""
    from eoforge.chips.cut import read_split
    from eoforge.chips.index import read_chip_index
    from eoforge.inference.drift import reference_from_chips
    from eoforge.inference.session import open_session

    x, _ = read_split(chips, "train")
    index = read_chip_index(chips)
    train = index[index["split"] == "train"].sort_values("index")
    scene_ids = [str(v) for v in train["item_id"]] if len(train) == len(x) else ["all"] * len(x)
    session = open_session(onnx_path, spec.infer.threads, prefer_gpu=False)
    return reference_from_chips(
        session, x, scene_ids, spec.stac.bands, spec.labels.classes, seed=spec.train.seed
    )


def _test_scenes(
    spec: RunSpec, cube_uri: Path, item_ids: Sequence[str] | None = None
) -> list[tuple[str, int, Any]]:
    """(tile, time index, dataset) of the scenes to predict: the test tiles, or the given items."""
    from eoforge.cube.build import list_tiles, open_tile

    tiles = list(spec.chips.test_tiles) if item_ids is None else list_tiles(cube_uri)
    scenes: list[tuple[str, int, Any]] = []
    for tile in tiles:
        ds = open_tile(cube_uri, tile)
        for t in range(ds.sizes["time"]):
            if item_ids is None or str(ds["item_id"].values[t]) in item_ids:
                scenes.append((tile, t, ds))
    return scenes


#: Pixels per strip of the random forest's per-pixel prediction (its feature table is
#: ~13 float32 columns: ~50 MB a strip, whatever the scene's size).
_BASELINE_STRIP_PX = 1 << 20

#: Streams one scene (a strip reader) into a class-map COG: (reader, tif, crs, transform).
ScenePredictor = Callable[[Any, Path, str, tuple[float, ...]], None]


def _baseline_predictor(spec: RunSpec, rf: Any, chips: Path, staging: Path) -> ScenePredictor:
    """sklearn's per-pixel prediction, or (``infer.serve_baseline_onnx``) the forest exported with
    skl2onnx and served through the same ONNX Runtime sliding-window path as the model; either
    streams a scene strip by strip into its COG."""
    from eoforge.inference.cog import CogWriter
    from eoforge.training import baseline

    if not spec.infer.serve_baseline_onnx:
        band_names = list(spec.stac.bands)

        def forest(reader: Any, tif: Path, crs: str, transform: tuple[float, ...]) -> None:
            _, height, width = reader.shape
            rows = max(1, _BASELINE_STRIP_PX // width)
            with CogWriter(tif, crs, transform, (height, width)) as out:
                for top in range(0, height, rows):
                    strip = reader.read_rows(top, min(top + rows, height))
                    out.write_rows(top, baseline.predict_scene(rf, strip, band_names=band_names))

        return forest
    from eoforge.chips.cut import read_split
    from eoforge.export.baseline_onnx import baseline_config, export_random_forest, per_pixel_spec
    from eoforge.export.mlm import model_item
    from eoforge.inference.predict import predict_to_cog
    from eoforge.inference.session import open_session
    from eoforge.io.atomic import write_json_atomic

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

    def onnx(reader: Any, tif: Path, crs: str, transform: tuple[float, ...]) -> None:
        predict_to_cog(session, reader, pixel_spec, tif, crs, transform)

    return onnx


def stage_baseline(
    spec: RunSpec, chips_uri: str, cube_uri: str, store: str, key: str
) -> dict[str, Any]:
    """Fit the per-pixel random forest on the train chips and predict every test scene (stored),
    streamed from the cube a chunk row at a time."""
    import zarr

    from eoforge.inference.scene_io import ChunkRowReader
    from eoforge.io.atomic import staged_dir, write_json_atomic
    from eoforge.training.baseline import train_random_forest

    out = stored(store, "baseline", key)
    reused = out.exists()
    if not reused:
        with staged_dir(out) as staging:
            t0 = time.perf_counter()
            rf = train_random_forest(Path(chips_uri), spec.train)
            fit_s = time.perf_counter() - t0
            predict = _baseline_predictor(spec, rf, Path(chips_uri), staging)
            for tile, t, ds in _test_scenes(spec, Path(cube_uri)):
                item_id = str(ds["item_id"].values[t])
                group = zarr.open_group(str(cube_uri), mode="r")[tile]
                assert isinstance(group, zarr.Group)
                reader = ChunkRowReader([group[b] for b in spec.stac.bands], t)
                transform = tuple(float(v) for v in ds.attrs["transform"])
                predict(reader, staging / f"{item_id}.tif", ds.attrs["crs"], transform)
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
    import zarr

    from eoforge.contracts import tables
    from eoforge.contracts.validation import enforce
    from eoforge.export.mlm import MODEL_ITEM_NAME, check_model_matches, model_item
    from eoforge.export.quantize import INT8_MODEL_NAME
    from eoforge.export.torch_session import open_predictor, runtime_of
    from eoforge.inference.drift import drift_scores, item_summary, load_reference
    from eoforge.inference.drift_scene import TimedProfile
    from eoforge.inference.item import prediction_item
    from eoforge.inference.predict import predict_to_cog
    from eoforge.inference.scene_io import ChunkRowReader
    from eoforge.inference.uncertainty import add_uncertainty_asset
    from eoforge.io.atomic import clean_stale_staging, staged_dir, write_json_atomic
    from eoforge.stac.items import self_href

    run = Path(run_dir)
    clean_stale_staging(run / "uncertainty")
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
    onnx_name = "model.onnx" if spec.infer.precision == "fp32" else INT8_MODEL_NAME
    if not (run_model / onnx_name).is_file():
        raise InputError(
            f"infer.precision is {spec.infer.precision} but model '{run_model}' has no "
            f"{onnx_name}; retrain/re-export the model with this eoforge, or use precision fp32."
        )
    session = open_predictor(run_model / onnx_name, spec.infer)
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
    trained = trained_units(run_model)
    reference = load_reference(run_model)
    drift_report: dict[str, dict[str, Any]] = {}
    drift_s = 0.0  # profiling for drift, kept out of the inference rate
    window_px = 0  # pixels through the model (overlapping windows)
    model_s: float | None = 0.0  # in the model's runs (None: not measurable on a device)
    for tile, t, ds in scenes:
        item_id = str(ds["item_id"].values[t])
        if item_id not in items:
            raise InputError(f"cube slice '{item_id}' has no STAC item in {items_uri}.")
        check_units(trained, ds.attrs.get("units") or {}, spec.stac.bands, tile)
        # Streamed strip by strip from the cube into the COG, each chunk row decoded once:
        # memory bounded by the window and the chunk, not the scene.
        group = zarr.open_group(str(cube_uri), mode="r")[tile]
        assert isinstance(group, zarr.Group)
        reader = ChunkRowReader([group[b] for b in spec.stac.bands], t)
        _, height, width = reader.shape
        pixels += height * width
        tif = run / "predictions" / f"{item_id}.tif"
        crs, transform = ds.attrs["crs"], tuple(ds.attrs["transform"])
        unc_tif = run / "uncertainty" / f"{item_id}.tif"
        profiler = None if reference is None else TimedProfile(spec.stac.bands, spec.labels.classes)
        _, stats = predict_to_cog(
            session, reader, spec.infer, tif, crs, transform, uncertainty_tif=unc_tif,
            rows_sink=None if profiler is None else profiler.add,
        )  # fmt: skip
        window_px += stats.window_pixels
        model_s = (
            None
            if model_s is None or stats.model_seconds is None
            else (model_s + stats.model_seconds)
        )
        drift = None
        if profiler is not None and reference is not None:  # profiled as the rows were written
            t_drift = time.perf_counter()
            profile = profiler.profile()
            drift = item_summary(profile, drift_scores(profile, reference))
            drift_report[item_id] = drift["scores"]
            drift_s += time.perf_counter() - t_drift + profiler.seconds
        item = prediction_item(
            tif,
            items[item_id],
            spec.labels.classes,
            model_href.replace("model.onnx", MODEL_ITEM_NAME),
            crs,
            transform,
            (height, width),
            source_href=self_href(items[item_id]),
            model_name=model_desc["properties"].get("mlm:name"),
        )
        item["properties"]["eoforge:precision"] = spec.infer.precision
        item["properties"]["eoforge:runtime"] = runtime_of(session)
        if drift is not None:
            item["properties"]["eoforge:drift"] = drift
        add_uncertainty_asset(item, unc_tif, f"../uncertainty/{unc_tif.name}")
        write_json_atomic(tif.with_suffix(".json"), item)
        written[item_id] = {
            "cog": str(tif),
            "item": str(tif.with_suffix(".json")),
            "uncertainty": str(unc_tif),
        }
    seconds = time.perf_counter() - t0 - drift_s
    del session  # its memory arena (the largest share of inference memory) goes now
    tifs = [Path(v["cog"]) for v in written.values()]
    result = enforce("predictions", tables.predictions_table(tifs, len(spec.labels.classes)))
    return {
        "predictions": written,
        "drift": drift_report,
        "drift_seconds": drift_s,
        "model_dir": model_dir,
        "seconds": seconds,
        "mpx_per_s": pixels / 1e6 / max(seconds, 1e-9),
        "pixels": pixels,
        "window_pixels": window_px,
        "model_seconds": model_s,
        "contract": result.to_dict(),
    }


def trained_units(model_dir: Path) -> dict[str, Any] | None:
    """The units the model was trained on (``input_units`` of model.json); None for a model
    from before units were recorded, or a bare ONNX file without its model.json)."""
    path = Path(model_dir) / "model.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    units = config.get("input_units")
    return dict(units) if isinstance(units, dict) else None


def check_units(
    trained: dict[str, Any] | None, cube: dict[str, Any], bands: Sequence[str], tile: str
) -> None:
    """Refuse to predict bands stored in other units than the model was trained on.

    Raises:
        InputError: a band's scale/offset differ (or only one side is harmonised).
    """
    if trained is None:
        return
    differ = {b: (trained.get(b), cube.get(b)) for b in bands if trained.get(b) != cube.get(b)}
    if differ:
        raise InputError(
            f"tile '{tile}' stores bands in other units than the model was trained on "
            f"(band: (model, cube) = {differ}); ingest with the model's cube.scale / cube.offset "
            "and cube.harmonise, or retrain."
        )
