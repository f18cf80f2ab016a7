"""Tests of eoforge.runs.scenes in one process: planning, per-scene ingest and inference."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import rasterio
import rasterio.warp
import shapely.geometry
from eoforge_test_helpers import asset_bands  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper

from eoforge.config import CubeSpec, InferSpec
from eoforge.cube.build import open_tile
from eoforge.errors import InputError
from eoforge.inference.drift import REFERENCE_NAME, ProfileAccumulator, reference_profile
from eoforge.inference.predict import predict_scene
from eoforge.inference.session import open_session
from eoforge.runs.scenes import (
    infer_batch,
    infer_scene,
    ingest_batch,
    ingest_scene,
    open_scene,
    plan_scenes,
    read_batch,
    run_serial,
    scene_store,
)
from eoforge.stac.aoi import item_footprint
from eoforge.stac.items import item_tile

VARIABLES = ["blue", "green", "red", "nir", "scl"]
BANDS = ["blue", "green", "red", "nir"]


def test_plan_writes_one_batch_file_per_task(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    plan = plan_scenes(real_items, tmp_path, scenes_per_task=4)
    assert plan.n_scenes == 10
    assert [Path(b).name for b in plan.batches] == [
        "batch-000000.ndjson",
        "batch-000001.ndjson",
        "batch-000002.ndjson",
    ]
    back = [it for b in plan.batches for it in read_batch(b)]
    assert back == real_items
    again = plan_scenes(real_items[:2], tmp_path)  # a re-plan replaces the whole plan
    assert len(list((tmp_path / "plan").iterdir())) == len(again.batches) == 2


@pytest.mark.parametrize(
    ("items", "kwargs", "match"),
    [
        ([], {}, "no STAC items"),
        ([{"id": "a"}, {"id": "a"}], {}, "more than once"),
        ([{"id": "../evil"}], {}, "cannot name a file"),
        ([{"id": "a"}], {"scenes_per_task": 0}, "scenes_per_task"),
    ],
)
def test_plan_rejects_bad_input(
    items: list[dict[str, Any]], kwargs: dict[str, Any], match: str, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=match):
        plan_scenes(items, tmp_path, **kwargs)


def test_read_batch_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_batch(tmp_path / "nope.ndjson")
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2"):
        read_batch(bad)


def test_ingested_scene_equals_its_cube_slice(
    real_items: list[dict[str, Any]], real_cube: Path, tmp_path: Path
) -> None:
    item = real_items[0]
    res = ingest_scene(item, VARIABLES, tmp_path, scheduler="synchronous")
    assert res["skipped"] is False and res["shape"] == [1, 512, 512]
    got = open_scene(tmp_path, item["id"])
    cube = open_tile(real_cube, item_tile(item))
    t = list(cube["item_id"].values).index(item["id"])
    for v in VARIABLES:
        np.testing.assert_array_equal(got[v].values[0], cube[v].values[t])
    assert got.attrs["item_ids"] == [item["id"]]
    assert got.attrs["tile"] == item_tile(item)
    assert got.attrs["transform"] == cube.attrs["transform"]

    same = ingest_scene(item, VARIABLES, tmp_path)
    assert same["skipped"] is True and same["shape"] == [1, 512, 512]
    other = ingest_scene(item, ["blue"], tmp_path)  # other inputs: rewritten
    assert other["skipped"] is False
    assert list(open_scene(tmp_path, item["id"]).data_vars) == ["blue"]
    assert sorted(p.name for p in (tmp_path / "scenes").iterdir()) == [f"{item['id']}.zarr"]


def _conv_model(path: Path, channels: int = 4, classes: int = 5) -> Path:
    """logits = 1x1 conv(image / 1e4): a real ONNX graph, no torch needed."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(classes, channels, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
        numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Div", ["image", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_infer_batch_writes_cog_and_item_per_scene(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    plan = plan_scenes(real_items[:2], tmp_path, scenes_per_task=2)
    classes = ["vegetation", "bare", "water", "cloud", "shadow"]
    spec = InferSpec(window=256, overlap=32, batch_size=4, threads=1)
    fn = functools.partial(
        infer_batch,
        onnx_path=model,
        out=tmp_path,
        bands=BANDS,
        classes=classes,
        spec=spec,
    )
    results = run_serial(fn, plan.batches)
    assert [r["item_id"] for r in results] == [it["id"] for it in real_items[:2]]
    session = open_session(model, threads=1)
    for r, source in zip(results, real_items[:2], strict=True):
        with rasterio.open(r["cog"]) as src:
            pred = src.read(1)
            assert src.crs.to_epsg() == 32633
        assert pred.shape == (512, 512) and pred.dtype == np.uint8
        # the COG holds the model's class map of this scene's own bands
        expected = predict_scene(session, asset_bands(source, BANDS), spec)
        np.testing.assert_array_equal(pred, expected)
        assert len(np.unique(pred)) >= 2  # a class map with content, not one class
        item = json.loads(Path(r["item"]).read_text())
        assert item["id"] == f"{r['item_id']}-prediction"
        assert any(lk["rel"] == "derived_from" for lk in item["links"])
        # the uncertainty is an asset of the same item, as on the single-process path
        unc = (Path(r["item"]).parent / item["assets"]["uncertainty"]["href"]).resolve()
        with rasterio.open(unc) as src:
            assert src.count == 2 and src.shape == (512, 512)


def test_infer_without_model_is_input_error(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    plan = plan_scenes(real_items[:1], tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        infer_batch(
            plan.batches[0],
            tmp_path / "missing.onnx",
            tmp_path,
            bands=BANDS,
            classes=["a", "b"],
            spec=InferSpec(),  # type: ignore[call-arg]
        )


def test_ingest_batch_runs_every_scene(real_items: list[dict[str, Any]], tmp_path: Path) -> None:
    plan = plan_scenes(real_items[:3], tmp_path, scenes_per_task=3)
    results = ingest_batch(plan.batches[0], ["scl"], tmp_path, scheduler="threads")
    assert [r["item_id"] for r in results] == [it["id"] for it in real_items[:3]]
    assert all(scene_store(tmp_path, it["id"]).is_dir() for it in real_items[:3])


def test_ingested_scene_follows_the_area_of_interest_and_the_cube_spec(
    real_items: list[dict[str, Any]], real_cube: Path, tmp_path: Path
) -> None:
    item = real_items[0]
    west, south, east, north = item_footprint(item).bounds
    w, h = east - west, north - south
    aoi = shapely.geometry.box(west + w / 4, south + h / 4, west + w / 2, south + h / 2)
    grid = CubeSpec.model_validate({"resolution": 240})
    res = ingest_scene(
        item, VARIABLES, tmp_path, cube=grid, aoi=shapely.geometry.mapping(aoi),
        label_variables=["scl"], scheduler="synchronous",
    )  # fmt: skip
    _, height, width = res["shape"]
    assert 50 < height < 100 and 50 < width < 100  # a quarter of the scene each way, at 240 m
    ds = open_scene(tmp_path, item["id"])
    units = open_tile(real_cube, item_tile(item)).attrs.get("units")
    assert ds.attrs.get("units") == units  # harmonised like a run's cube
    assert "scl" not in (units or {})
    assert ds["scl"].dtype == np.uint8  # the label stays a class raster
    again = ingest_scene(
        item, VARIABLES, tmp_path, cube=grid, aoi=shapely.geometry.mapping(aoi),
        label_variables=["scl"],
    )  # fmt: skip
    assert again["skipped"] is True and again["shape"] == res["shape"]
    whole = ingest_scene(item, VARIABLES, tmp_path, label_variables=["scl"])  # other area
    assert whole["skipped"] is False and whole["shape"] == [1, 512, 512]
    far = shapely.geometry.box(-60.0, -10.0, -59.0, -9.0)
    other = real_items[1]
    missed = ingest_scene(other, VARIABLES, tmp_path, aoi=shapely.geometry.mapping(far))
    assert missed["skipped"] is True and missed["uri"] is None
    assert not scene_store(tmp_path, other["id"]).exists()


# ---- the scale path's per-scene inference goes through the run's own path: the cube's grid
# and units, the area of interest, the model's units, strip-by-strip prediction

AOI_CLASSES = ["vegetation", "bare", "water", "cloud", "shadow"]
AOI_SPEC = InferSpec(window=256, overlap=32, batch_size=4, threads=1)


def _leftovers(out: Path) -> list[str]:
    scenes = out / "scenes"
    return sorted(p.name for p in scenes.iterdir()) if scenes.exists() else []


def test_scene_prediction_equals_the_cube_path(
    real_items: list[dict[str, Any]], real_cube: Path, tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    item = real_items[0]
    res = infer_scene(item, model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC)
    tile = open_tile(real_cube, item_tile(item))
    t = [str(i) for i in tile["item_id"].values].index(item["id"])
    bands = np.stack([tile[b].isel(time=t).values for b in BANDS])
    expected = predict_scene(open_session(model, 1), bands, AOI_SPEC)
    with rasterio.open(res["cog"]) as src:
        assert np.array_equal(src.read(1), expected)
    assert res["skipped"] is False and res["shape"] == list(expected.shape)
    assert _leftovers(tmp_path) == []  # the staging cube is gone


def test_the_area_of_interest_bounds_the_scene_and_misses_are_skipped(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    item = real_items[0]
    west, south, east, north = item_footprint(item).bounds
    w, h = east - west, north - south
    aoi = shapely.geometry.box(west + w / 4, south + h / 4, west + w / 2, south + h / 2)
    res = infer_scene(
        item, model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC,
        aoi=shapely.geometry.mapping(aoi),
    )  # fmt: skip
    height, width = res["shape"]
    assert 100 < height < 200 and 100 < width < 200  # about a quarter of 512 px each way
    with rasterio.open(res["cog"]) as src:
        b = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    pad = 0.01  # under a pixel of 120 m, in degrees
    assert aoi.buffer(pad).contains(shapely.geometry.box(*b))
    far = shapely.geometry.box(-60.0, -10.0, -59.0, -9.0)
    other = real_items[1]
    skipped = infer_scene(
        other, model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC,
        aoi=shapely.geometry.mapping(far),
    )  # fmt: skip
    assert skipped["skipped"] is True
    assert not (tmp_path / "predictions" / f"{other['id']}.tif").exists()
    assert _leftovers(tmp_path) == []


def test_scene_predictions_carry_drift_scores_against_the_models_reference(
    real_items: list[dict[str, Any]], real_cube: Path, tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    item, other = real_items[0], real_items[1]
    tile = open_tile(real_cube, item_tile(item))
    t = [str(i) for i in tile["item_id"].values].index(item["id"])
    bands = np.stack([tile[b].isel(time=t).values for b in BANDS])
    acc = ProfileAccumulator(BANDS, AOI_CLASSES)
    acc.add(bands, predict_scene(open_session(model, 1), bands, AOI_SPEC))
    reference = reference_profile([acc])
    (tmp_path / REFERENCE_NAME).write_text(json.dumps(reference))
    res = infer_scene(item, model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC)
    assert res["drift"] is not None and res["drift"]["drifted"] is False  # its own reference
    stac_item = json.loads(Path(res["item"]).read_text())
    assert stac_item["properties"]["eoforge:drift"]["scores"] == res["drift"]
    assert stac_item["properties"]["eoforge:precision"] == "fp32"
    assert stac_item["properties"]["eoforge:runtime"].startswith("openvino ")  # the CPU default
    # a model trained on 40 % brighter pixels: a real scene of the sample drifts from it
    acc2 = ProfileAccumulator(BANDS, AOI_CLASSES)
    bright = (bands.astype(np.float32) * 1.4).astype(np.uint16)
    acc2.add(bright, predict_scene(open_session(model, 1), bright, AOI_SPEC))
    (tmp_path / REFERENCE_NAME).write_text(json.dumps(reference_profile([acc2])))
    moved = infer_scene(other, model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC)
    assert moved["drift"]["drifted"] is True, moved["drift"]


def test_a_model_trained_in_other_units_is_refused_before_anything_is_written(
    real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    raw = {b: {"scale": 1.0, "offset": 0.0} for b in BANDS}
    (tmp_path / "model.json").write_text(json.dumps({"input_units": raw}))
    with pytest.raises(InputError, match="other units than the model was trained on"):
        infer_scene(real_items[0], model, tmp_path, bands=BANDS, classes=AOI_CLASSES, spec=AOI_SPEC)
    assert not (tmp_path / "predictions").exists()
    assert _leftovers(tmp_path) == []
