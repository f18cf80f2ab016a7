"""A small real run folder for the labelling tools: two bundled Sentinel-2 scenes predicted by
a per-pixel ONNX model through eoforge's own inference (class map, uncertainty, STAC items)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from onnx import TensorProto, helper, numpy_helper

from eoforge.config import BUNDLED_CATALOG, InferSpec
from eoforge.inference.item import prediction_item
from eoforge.inference.predict import predict_to_cog
from eoforge.inference.scene_io import ArrayReader
from eoforge.inference.session import open_session
from eoforge.inference.uncertainty import add_uncertainty_asset
from eoforge.io.atomic import write_json_atomic

SCENES = ("S2A_33TWL_20230815_0_L2A", "S2A_33TWM_20230815_0_L2A")
BANDS = ("blue", "green", "red", "nir")
CLASSES = ("water", "vegetation", "bare")


def pixel_model(path: Path) -> Path:
    """A per-pixel model: water (dark nir), vegetation (nir >> red), bare (bright red)."""
    weight = np.array([[0, 0, 0, -40], [0, 0, -30, 30], [0, 0, 25, -5]], np.float32)
    bias = np.array([6, 0, 1], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["image", "scale"], ["x"]),
            helper.make_node("Conv", ["x", "w", "b"], ["logits"]),
        ],
        "pixel",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        initializer=[
            numpy_helper.from_array(weight.reshape(3, 4, 1, 1), "w"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_run(run: Path) -> Path:
    session = open_session(pixel_model(run.parent / f"{run.name}-model.onnx"), threads=1)
    features = []
    for scene_id in SCENES:
        item_path = BUNDLED_CATALOG / scene_id / f"{scene_id}.json"
        source = json.loads(item_path.read_text())
        source["links"] = [{"rel": "self", "href": item_path.resolve().as_uri()}]
        for asset in source["assets"].values():
            asset["href"] = (item_path.parent / asset["href"]).resolve().as_uri()
        features.append(source)
        stack = []
        for band in BANDS:
            with rasterio.open(source["assets"][band]["href"]) as src:
                stack.append(src.read(1))
                crs, transform = src.crs.to_string(), tuple(src.transform)[:6]
        bands = np.stack(stack)
        tif = run / "predictions" / f"{scene_id}.tif"
        unc = run / "uncertainty" / f"{scene_id}.tif"
        spec = InferSpec(window=128, overlap=32, batch_size=4)
        predict_to_cog(session, ArrayReader(bands), spec, tif, crs, transform, uncertainty_tif=unc)
        item = prediction_item(tif, source, CLASSES, None, crs, transform, bands.shape[1:])
        add_uncertainty_asset(item, unc, f"../uncertainty/{unc.name}")
        write_json_atomic(tif.with_suffix(".json"), item)
    write_json_atomic(run / "items.json", {"type": "FeatureCollection", "features": features})
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("labelling") / "run")
