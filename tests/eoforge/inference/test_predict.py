"""Tests of eoforge.inference.predict on tiny ONNX graphs built in code (no torch, no downloads)."""

from __future__ import annotations

import json
import os
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pystac
import pytest
import rasterio
from eoforge_test_helpers import vendored_validator  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.cog import CogWriter, write_prediction
from eoforge.inference.item import prediction_item
from eoforge.inference.predict import _pipelined, predict_raster, predict_scene, predict_to_cog
from eoforge.inference.scene_io import NODATA_CLASS, ArrayReader, RasterioReader
from eoforge.inference.session import (
    _POOL,
    _BatchRunner,
    _BufferPool,
    _Buffers,
    open_session,
    session_options,
)
from eoforge.inference.windows import (
    _axis_plan,
    _axis_weights,
    _BlendBuffer,
    _BlendPlan,
    _RowSource,
    _weighted_softmax_,
)
from eoforge.io.atomic import write_json_atomic

CRS = "EPSG:32633"
TRANSFORM = (120.0, 0.0, 500000.0, 0.0, -120.0, 5000040.0)
SPEC = InferSpec(window=64, overlap=16, batch_size=4)


# --------------------------------------------------------------------------- tiny models


def _save(
    path: Path,
    nodes: list[Any],
    inits: list[Any],
    channels: int,
    classes: int,
    shape: tuple[Any, ...] | None = None,
) -> Path:
    shape = shape or ("N", channels, "H", "W")
    out_shape = (shape[0], classes, shape[2], shape[3])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def conv_model(
    path: Path, weight: np.ndarray, bias: np.ndarray, shape: tuple[Any, ...] | None = None
) -> Path:
    """One Conv (same padding): logits = conv(image / 1e4)."""
    k, c, kh, _ = weight.shape
    inits = [
        numpy_helper.from_array(weight.astype(np.float32), "w"),
        numpy_helper.from_array(bias.astype(np.float32), "b"),
        numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Div", ["image", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[kh // 2] * 4),
    ]
    return _save(path, nodes, inits, c, k, shape)


def small_net(path: Path, channels: int = 4, width: int = 16, classes: int = 5) -> Path:
    """Normalise, conv3x3-relu, conv3x3-relu, conv1x1: a stand-in for a small segmenter."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.full((1, channels, 1, 1), 1500, np.float32), "mean"),
        numpy_helper.from_array(np.full((1, channels, 1, 1), 800, np.float32), "std"),
    ]
    nodes = [
        helper.make_node("Sub", ["image", "mean"], ["a"]),
        helper.make_node("Div", ["a", "std"], ["x0"]),
    ]
    specs = [(channels, width, 3), (width, width, 3), (width, classes, 1)]
    for n, (cin, cout, k) in enumerate(specs):
        w = rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{n}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{n}"),
        ]
        out = "logits" if n == len(specs) - 1 else f"c{n}"
        nodes.append(
            helper.make_node("Conv", [f"x{n}", f"w{n}", f"b{n}"], [out], pads=[k // 2] * 4)
        )
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"x{n + 1}"]))
    return _save(path, nodes, inits, channels, classes)


def scene(h: int, w: int, c: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 6000, (c, h, w), dtype=np.uint16)


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A per-pixel (1x1 conv) model with 4 bands -> 3 classes."""
    rng = np.random.default_rng(1)
    path = conv_model(
        tmp_path_factory.mktemp("m") / "pixel.onnx",
        rng.normal(size=(3, 4, 1, 1)),
        rng.normal(size=3),
    )
    return open_session(path, threads=1)


@pytest.fixture(scope="module")
def conv3_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    rng = np.random.default_rng(2)
    path = conv_model(
        tmp_path_factory.mktemp("m") / "conv3.onnx",
        rng.normal(size=(3, 4, 3, 3)),
        rng.normal(size=3) * 0.1,
    )
    return open_session(path, threads=1)


# --------------------------------------------------------------------------- sliding window


def test_axis_plan_spreads_windows_evenly_and_pads_short_axes() -> None:
    assert _axis_plan(300, 64, 16, None) == (64, 300, [0, 47, 94, 141, 188, 236])
    # a static model keeps its window; the last one shifts inward
    assert _axis_plan(300, 64, 16, 64) == (64, 300, [0, 48, 96, 144, 192, 236])
    assert _axis_plan(64, 64, 16, None) == (64, 64, [0])
    assert _axis_plan(37, 64, 16, None) == (40, 40, [0])  # padded to a multiple of 8
    assert _axis_plan(37, 64, 16, 64) == (64, 64, [0])  # padded to a static model window
    # the product's windows: as many as 512 px needs, each as short as that count allows
    assert _axis_plan(10980, 512, 48, None)[:2] == (504, 10980)
    assert _axis_plan(915, 512, 48, None) == (488, 915, [0, 427])
    for size in (65, 100, 300, 513, 915, 1000, 4097, 10980):
        for window, overlap in ((64, 0), (64, 16), (512, 48), (512, 64), (256, 200)):
            edge, padded, starts = _axis_plan(size, window, overlap, None)
            if size <= window:
                continue
            step = window - overlap  # the count a fixed window needs, with the last inward
            assert len(starts) == -(-(size - window) // step) + 1
            assert padded == size and edge <= window and edge % 8 == 0
            assert starts[0] == 0 and starts[-1] + edge == size
            assert min(a + edge - b for a, b in pairwise(starts)) >= overlap
    for starts in ([0, 48, 96, 144, 192, 236], [0, 47, 94, 141, 188, 236], [0, 8], [0]):
        ws = _axis_weights(starts, 64)
        assert all(w.min() > 0 for w in ws)
        cover = np.zeros(starts[-1] + 64)
        for s, w in zip(starts, ws, strict=True):
            cover[s : s + 64] += w
        # complementary ramps: every pixel's weights sum to exactly 1 (no seam, no bias)
        np.testing.assert_allclose(cover, 1.0, rtol=1e-6)
        assert ws[0][0] == 1 and ws[-1][-1] == 1  # full weight at scene borders


def test_constant_model_gives_constant_mosaic(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "const.onnx", np.zeros((5, 4, 3, 3)), np.array([0, 0, 3, 1, 0.0]))
    pred = predict_scene(open_session(path, threads=1), scene(300, 517), SPEC)
    assert pred.shape == (300, 517) and pred.dtype == np.uint8
    assert (pred == 2).all()


@pytest.mark.parametrize("shape", [(300, 517), (64, 64), (37, 45), (5, 3), (1, 130), (71, 64)])
def test_output_shape_equals_input_shape(pixel_model: Any, shape: tuple[int, int]) -> None:
    bands = scene(*shape)
    pred = predict_scene(pixel_model, bands, SPEC)
    assert pred.shape == shape
    # a per-pixel model: windowed result equals the model applied to every pixel at once
    direct = pixel_model.run(["logits"], {"image": bands[None].astype(np.float32)})[0][0]
    np.testing.assert_array_equal(pred, direct.argmax(axis=0))


def test_shifted_scene_gives_shifted_prediction(pixel_model: Any) -> None:
    """Window geometry only: a per-pixel model is blind to the blend weights, which
    test_blend_weights_hide_each_windows_border checks with a model that sees its border."""
    big = scene(340, 560, seed=3)
    dy, dx = 13, 29
    a = predict_scene(pixel_model, big[:, :300, :517], SPEC)
    b = predict_scene(pixel_model, big[:, dy : dy + 300, dx : dx + 517], SPEC)
    np.testing.assert_array_equal(a[dy:, dx:], b[: 300 - dy, : 517 - dx])


def test_blend_has_no_seams_with_spatial_model(conv3_model: Any) -> None:
    bands = scene(300, 517, seed=4)
    pred = predict_scene(conv3_model, bands, SPEC)
    direct = conv3_model.run(["logits"], {"image": bands[None].astype(np.float32)})[0][0]
    top2 = np.sort(direct, axis=0)[-2:]
    confident = top2[1] - top2[0] > 0.25
    # a window's zero-padded border pixels are outweighed by the neighbour that sees them inside,
    # so only near-ties may differ from running the model on the whole scene at once
    np.testing.assert_array_equal(pred[confident], direct.argmax(axis=0)[confident])
    assert (pred == direct.argmax(axis=0)).mean() > 0.995


def border_model(path: Path, k: int = 9, margin: float = 3.0) -> Path:
    """A model that is wrong near a window's zero-padded border: class 1 where the whole
    ``k x k`` neighbourhood is a scene of 1000 DN (logit ``margin``), class 0 where padding
    cuts into it (each missing pixel lowers the class-1 logit by 0.4)."""
    weight = np.zeros((2, 4, k, k))
    weight[1] = 1.0
    full = k * k * 4 * 0.1  # the neighbourhood sum of a 1000 DN scene, after / 1e4
    return conv_model(path, weight, np.array([0.0, margin - full]))


def test_blend_weights_hide_each_windows_border(tmp_path: Path) -> None:
    """Where windows overlap, the one that sees a pixel away from its border must decide: the
    blend's ramps give a window's border pixels little weight. Uniform weights would let the
    border's wrong answer tie or win, leaving seams along every window edge."""
    session = open_session(border_model(tmp_path / "border.onnx"), threads=1)
    bands = np.full((4, 300, 517), 1000, np.uint16)
    direct = session.run(["logits"], {"image": bands[None].astype(np.float32)})[0][0].argmax(0)
    assert (direct[4:-4, 4:-4] == 1).all() and (direct[:4] == 0).all()  # only scene borders
    alone = session.run(["logits"], {"image": bands[None, :, :64, 48:112].astype(np.float32)})
    assert (alone[0][0].argmax(0)[:, :4] == 0).all()  # premise: a window's own border is wrong
    pred = predict_scene(session, bands, SPEC)
    np.testing.assert_array_equal(pred, direct)


def test_nodata_pixels_and_empty_windows(pixel_model: Any) -> None:
    bands = scene(200, 300, seed=5)
    full = predict_scene(pixel_model, bands, SPEC)
    bands[:, :, :150] = 0  # left half missing: its windows are skipped
    bands[2, 100, 200] = 0  # one band missing
    pred = predict_scene(pixel_model, bands, SPEC)
    assert (pred[:, :150] == NODATA_CLASS).all()
    assert pred[100, 200] == NODATA_CLASS
    right = np.ones((200, 150), bool)
    right[100, 50] = False
    np.testing.assert_array_equal(pred[:, 150:][right], full[:, 150:][right])
    assert (predict_scene(pixel_model, np.zeros((4, 70, 70), np.uint16), SPEC) == 255).all()


def test_static_shape_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    path = conv_model(
        tmp_path / "static.onnx",
        rng.normal(size=(3, 4, 1, 1)),
        rng.normal(size=3),
        shape=(2, 4, 64, 64),
    )
    session = open_session(path, threads=1)
    bands = scene(100, 45, seed=6)
    pred = predict_scene(session, bands, SPEC)
    assert pred.shape == (100, 45)
    with pytest.raises(InputError, match=r"infer\.window"):
        predict_scene(session, bands, InferSpec(window=128, overlap=16))


def test_bad_inputs_are_input_errors(pixel_model: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expects 4 input bands"):
        predict_scene(pixel_model, scene(64, 64, c=3), SPEC)
    with pytest.raises(ValueError, match="multiple of 8"):  # the spec refuses it first
        InferSpec(window=60, overlap=8)
    with pytest.raises(InputError, match="multiple of 8"):  # and so does inference itself
        predict_scene(
            pixel_model,
            scene(64, 64),
            InferSpec.model_construct(window=60, overlap=8, batch_size=1, threads=None),
        )
    with pytest.raises(InputError, match="smaller than"):
        predict_scene(
            pixel_model,
            scene(64, 64),
            InferSpec.model_construct(window=64, overlap=64, batch_size=1),
        )
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        predict_scene(pixel_model, scene(64, 64)[0], SPEC)
    with pytest.raises(InputError, match="does not exist"):
        open_session(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot be loaded"):
        open_session(tmp_path / "junk.onnx")
    model = onnx.load(conv_model(tmp_path / "m.onnx", np.ones((2, 4, 1, 1)), np.zeros(2)))
    model.graph.output[0].name = "out"
    model.graph.node[-1].output[0] = "out"
    onnx.save(model, tmp_path / "renamed.onnx")
    with pytest.raises(InputError, match="output 'logits'"):
        open_session(tmp_path / "renamed.onnx")


def test_throughput_small_net(tmp_path: Path, record_property: Any) -> None:
    """Throughput of a 3-conv net on a 4x512x512 scene (reported, loosely bounded)."""
    session = open_session(small_net(tmp_path / "net.onnx"), threads=2)
    bands = scene(512, 512, seed=7)
    spec = InferSpec(window=256, overlap=64, batch_size=4)
    predict_scene(session, bands, spec)  # warm-up
    t0 = time.perf_counter()
    pred = predict_scene(session, bands, spec)
    seconds = time.perf_counter() - t0
    mpx_s = bands.shape[1] * bands.shape[2] / 1e6 / seconds
    record_property("predict_scene_mpx_per_s", round(mpx_s, 2))
    print(f"predict_scene: {mpx_s:.2f} Mpx/s ({seconds * 1000:.0f} ms for 512x512)")
    assert pred.shape == (512, 512) and pred.max() < 5
    assert mpx_s > 0.05


# --------------------------------------------------------------------------- outputs


def _class_map(h: int = 1100, w: int = 1030) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    pred = np.where((yy + xx) % 2 == 0, 0, 4).astype(np.uint8)  # averaging would give 2
    pred[:20] = NODATA_CLASS
    return pred


def test_write_prediction_is_cog_deterministic_and_atomic(tmp_path: Path) -> None:
    pred = _class_map()
    a = write_prediction(pred, CRS, TRANSFORM, tmp_path / "a" / "p.tif")
    b = write_prediction(pred, CRS, TRANSFORM, tmp_path / "b" / "p.tif")
    assert a == b
    again = write_prediction(pred, CRS, TRANSFORM, tmp_path / "a" / "p.tif")  # overwrite
    assert again == a
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["p.tif"]
    with rasterio.open(tmp_path / "a" / "p.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.compression.name.upper() == "DEFLATE"
        assert src.nodata == NODATA_CLASS and src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == TRANSFORM
        np.testing.assert_array_equal(src.read(1), pred)
        assert src.overviews(1)
    with rasterio.open(tmp_path / "a" / "p.tif", overview_level=0) as ovr:
        assert set(np.unique(ovr.read(1))) <= {0, 4, NODATA_CLASS}


def test_write_prediction_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="uint8"):
        write_prediction(np.zeros((4, 4), np.int32), CRS, TRANSFORM, tmp_path / "p.tif")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="CRS"):
        write_prediction(np.zeros((4, 4), np.uint8), "EPSG:nope", TRANSFORM, tmp_path / "p.tif")
    with pytest.raises(InputError, match="transform"):
        write_prediction(np.zeros((4, 4), np.uint8), CRS, (1.0, 2.0), tmp_path / "p.tif")
    assert not list(tmp_path.iterdir())


SOURCE = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "id": "S2A_33TWM_20230815_0_L2A",
    "properties": {
        "datetime": "2023-08-15T09:57:57.246000Z",
        "platform": "sentinel-2a",
        "eo:cloud_cover": 0.2,
    },
    "geometry": None,
    "links": [
        {
            "rel": "self",
            "href": "http://127.0.0.1:7822/collections/s2/items/S2A_33TWM_20230815_0_L2A",
        }
    ],
    "assets": {},
}


def _item(tmp_path: Path) -> dict[str, Any]:
    pred = _class_map(90, 120)
    tif = tmp_path / f"{SOURCE['id']}.tif"
    write_prediction(pred, CRS, TRANSFORM, tif)
    return prediction_item(
        tif,
        SOURCE,
        ["vegetation", "bare", "water", "cloud", "shadow"],
        "../model/model-item.json",
        CRS,
        TRANSFORM,
        pred.shape,
        model_name="eoforge-unet",
    )


def test_prediction_item(tmp_path: Path) -> None:
    d = _item(tmp_path)
    assert d["id"] == "S2A_33TWM_20230815_0_L2A-prediction"
    assert d["properties"]["datetime"] == "2023-08-15T09:57:57.246000Z"
    assert d["properties"]["proj:code"] == "EPSG:32633"
    assert d["properties"]["proj:shape"] == [90, 120]
    assert d["properties"]["proj:transform"] == list(TRANSFORM)
    asset = d["assets"]["classification"]
    assert asset["href"] == "./S2A_33TWM_20230815_0_L2A.tif"
    assert asset["type"] == pystac.MediaType.COG and asset["roles"] == ["data"]
    assert asset["classification:classes"][-1] == {"value": 255, "name": "nodata", "nodata": True}
    assert asset["classification:classes"][2] == {"value": 2, "name": "water"}
    assert asset["file:checksum"].startswith("1220") and len(asset["file:checksum"]) == 68
    derived = [link for link in d["links"] if link["rel"] == "derived_from"]
    assert [link["href"] for link in derived] == [
        SOURCE["links"][0]["href"],
        "../model/model-item.json",
    ]
    assert derived[1]["mlm:name"] == "eoforge-unet"
    # UTM 33N easting 500000 is the 15 E meridian; 90 rows of 120 m ~ 0.1 degree of latitude
    west, south, east, north = d["bbox"]
    assert abs(west - 15.0) < 1e-6 and 44.9 < south < north < 45.2 and east > west
    item = pystac.Item.from_dict(d)
    assert item.to_dict(include_self_link=False, transform_hrefs=False) == d
    assert pystac.validation.validate_dict(json.loads(json.dumps(d)), extensions=[])  # core schema


def test_prediction_item_validates_against_vendored_extension_schemas(tmp_path: Path) -> None:
    """Core + projection + file schemas, vendored as test data: runs offline, in CI."""
    d = json.loads(json.dumps(_item(tmp_path)))
    offline = [e for e in d["stac_extensions"] if "/classification/" not in e]
    assert len(offline) == len(d["stac_extensions"]) - 1 == 2
    validator = vendored_validator()
    checked = pystac.validation.validate_dict(d, extensions=offline, validator=validator)
    assert checked[1:] == offline  # each extension schema was applied
    bad = json.loads(json.dumps(d))
    bad["properties"]["proj:shape"] = [90]  # the projection schema wants two numbers
    with pytest.raises(pystac.STACValidationError, match="projection"):
        pystac.validation.validate_dict(bad, extensions=offline, validator=validator)


@pytest.mark.skipif(
    not os.environ.get("EOFORGE_NETWORK_TESTS"),
    reason="the classification v2.0.0 schema is not vendored (tests/data/stac-schemas/README.md); "
    "set EOFORGE_NETWORK_TESTS=1 to fetch it",
)
def test_prediction_item_classification_schema(tmp_path: Path) -> None:
    pystac.Item.from_dict(_item(tmp_path)).validate()


def test_prediction_item_needs_a_source_href(tmp_path: Path) -> None:
    tif = tmp_path / "p.tif"
    write_prediction(np.zeros((8, 8), np.uint8), CRS, TRANSFORM, tif)
    source = {**SOURCE, "links": []}
    with pytest.raises(InputError, match="source_href"):
        prediction_item(tif, source, ["a"], None, CRS, TRANSFORM, (8, 8))
    d = prediction_item(tif, source, ["a"], None, CRS, TRANSFORM, (8, 8), source_href="s.json")
    assert [link["href"] for link in d["links"]] == ["s.json"]
    with pytest.raises(InputError, match="classes"):
        prediction_item(tif, SOURCE, ["no spaces"], None, CRS, TRANSFORM, (8, 8))


def test_write_json_atomic_is_deterministic(tmp_path: Path) -> None:
    a = write_json_atomic(tmp_path / "x.json", {"b": 1, "a": [1.5, None]})
    b = write_json_atomic(tmp_path / "x.json", {"a": [1.5, None], "b": 1})
    assert a == b
    assert (
        tmp_path / "x.json"
    ).read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# --------------------------------------------------------------------------- tuned sessions


def test_session_options_are_tuned() -> None:
    import onnxruntime as ort

    opts = session_options(3)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.enable_mem_pattern and opts.enable_cpu_mem_arena
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (
        session_options(spinning=True).get_session_config_entry("session.intra_op.allow_spinning")
        == "1"
    )
    with pytest.raises(InputError, match="threads"):
        session_options(0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def test_io_binding_reuses_its_buffers(conv3_model: Any) -> None:
    runner = _BatchRunner(conv3_model, 4, 4, 32, 32, fixed=False)
    runner.stack[:] = scene(32, 32 * 4, seed=8).reshape(4, 32, 4, 32).transpose(2, 0, 1, 3)
    plan = _BlendPlan.of([np.ones(32, np.float32)], [np.ones(32, np.float32)])
    expected = _softmax(conv3_model.run(["logits"], {"image": runner.stack})[0])
    first = runner.run([(0, 0)] * 4, plan).copy()
    buffer = runner.out
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-7)
    second = runner.run([(0, 0)] * 3, plan)
    assert runner.out is buffer and second.base is buffer  # no new output allocation
    np.testing.assert_allclose(second, expected[:3], rtol=1e-5, atol=1e-7)
    assert runner.batches == 2


def test_calls_on_one_session_reuse_its_batch_buffers(tmp_path: Path) -> None:
    """A second call with the same session and windows runs in the first call's buffers (no
    fresh pages a scene), gives the same bytes, and the pool holds a bounded few."""
    session = open_session(
        conv_model(tmp_path / "m.onnx", np.ones((3, 4, 1, 1)), np.zeros(3)), threads=1
    )
    bands = scene(150, 170, seed=21)
    seen: list[int] = []
    taken = _BatchRunner.take

    def spy(*args: Any) -> _BatchRunner:
        runner = taken(*args)
        seen.append(id(runner.stack))
        return runner

    _BatchRunner.take = spy  # type: ignore[method-assign]
    try:
        first = predict_scene(session, bands, SPEC)
        assert _POOL.idle(session) == 1
        second = predict_scene(session, bands, SPEC)
        pipelined = predict_scene(session, bands, SPEC.model_copy(update={"pipelined": True}))
        other = predict_scene(session, bands[:, :40, :40], SPEC)  # other window edges
    finally:
        _BatchRunner.take = taken  # type: ignore[method-assign]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, pipelined)
    np.testing.assert_array_equal(other, predict_scene(session, bands[:, :40, :40], SPEC))
    assert seen[1] == seen[0]  # the second call took the first call's buffers
    assert seen[0] in seen[2:4]  # and a pipelined call takes them as one of its two
    assert seen[4] not in seen[:4]  # other shapes get their own
    assert _POOL.idle(session) == _POOL.keep
    if hasattr(os, "fork"):  # a forked child (the warm engine's runs) starts with none
        pid = os.fork()
        if pid == 0:
            from eoforge.inference import session as sessions

            os._exit(0 if sessions._POOL.idle(session) == 0 and sessions._POOL is not _POOL else 1)
        assert os.waitpid(pid, 0)[1] == 0

    pool = _BufferPool(keep=2)
    key = (1, 4, 8, 8, False)
    made = [_Buffers(np.zeros((1, 4, 8, 8), np.float32), None) for _ in range(3)]
    for buffers in made:
        pool.give_back(session, key, buffers)
    assert pool.idle(session) == 2  # the oldest dropped
    assert pool.take(session, key) is made[1] and pool.take(session, key) is made[2]
    assert pool.take(session, key) is None and pool.take(session, (2, 4, 8, 8, False)) is None

    class Slotted:  # no weak reference: not pooled, still served
        __slots__ = ()

    pool.give_back(Slotted(), key, made[0])
    assert pool.take(Slotted(), key) is None and pool.idle(Slotted()) == 0
    del session
    import gc

    gc.collect()
    assert len(pool._idle) == 0  # a collected session's buffers are dropped


def test_weighted_softmax_weighs_only_the_ramps_and_refuses_broken_logits() -> None:
    starts = [0, 24, 40]
    weights = _axis_weights(starts, 32)
    plan = _BlendPlan.of(weights, weights)
    for w, ramps in zip(weights, plan.ramps_y, strict=True):
        rebuilt = np.ones_like(w)
        for cut, part in ramps:
            rebuilt[cut] = part
        np.testing.assert_array_equal(rebuilt, w)  # ramps cover every weight below 1
    logits = np.random.default_rng(3).normal(0, 4, (3, 5, 32, 32)).astype(np.float32)
    logits[0, 2, 3, 4] = -np.inf  # a class the model rules out: probability 0, not an error
    windows = [(0, 1), (1, 1), (2, 0)]
    wy = np.stack([weights[i] for i, _ in windows])
    wx = np.stack([weights[j] for _, j in windows])
    expected = _softmax(logits) * (wy[:, None, :, None] * wx[:, None, None, :])
    got = _weighted_softmax_(logits.copy(), plan.ramps(windows))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    for bad in (np.nan, np.inf):
        broken = logits.copy()
        broken[1, 0, 5, 5] = bad
        with pytest.raises(InputError, match="non-finite"):
            _weighted_softmax_(broken, plan.ramps(windows))


def test_blend_buffer_reuses_rows_and_grows_only_when_needed() -> None:
    buf = _BlendBuffer(2, 4, capacity=6)
    first = buf.buf
    buf.region(0, 4)[:] += 1
    buf.region(2, 6)[:] += 2  # rows 2..3 overlap
    np.testing.assert_array_equal(buf.region(0, 6)[0, :, 0], [1, 1, 3, 3, 2, 2])
    buf.release(4)
    assert buf.rows == 2
    buf.region(0, 4)[:] += 5  # runs past the end: the 2 live rows move to the top
    assert buf.buf is first
    np.testing.assert_array_equal(buf.region(0, 4)[1, :, 3], [7, 7, 5, 5])
    buf.region(0, 9)  # more than the capacity: grows, keeping the live rows
    assert buf.buf.shape[1] >= 9
    np.testing.assert_array_equal(buf.region(0, 9)[1, :, 3], [7, 7, 5, 5, 0, 0, 0, 0, 0])
    buf.release(9)
    grown = buf.buf.shape[1]
    assert not buf.region(0, grown - 9).any()  # rows never written are zero
    buf.region(0, grown - 9)[:] += 4
    fresh = buf.region(0, grown - 8)  # past the end: compaction over the released rows
    assert buf.start == 0 and (fresh[:, :-1] == 4).all() and not fresh[:, -1].any()
    assert not buf.buf[:, grown - 8 :].any()  # what lay behind the live rows is zeroed


# --------------------------------------------------------------------------- streaming


class RowsSpy:
    """A reader wrapper that records which rows were read."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.reads: list[tuple[int, int]] = []

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.reader.shape  # type: ignore[no-any-return]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        self.reads.append((top, bottom))
        return self.reader.read_rows(top, bottom)  # type: ignore[no-any-return]


class Collect:
    def __init__(self, h: int, w: int) -> None:
        self.out = np.full((h, w), 7, np.uint8)
        self.next = 0

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        assert top == self.next, "rows must arrive in order, once"
        self.out[top : top + len(rows)] = rows
        self.next = top + len(rows)


@pytest.mark.parametrize("shape", [(300, 517), (37, 45), (64, 200), (1, 130)])
def test_predict_raster_equals_predict_scene(conv3_model: Any, shape: tuple[int, int]) -> None:
    bands = scene(*shape, seed=9)
    bands[:, : shape[0] // 2, : shape[1] // 3] = 0  # skipped windows
    expected = predict_scene(conv3_model, bands, SPEC)
    spy = RowsSpy(ArrayReader([b for b in bands]))  # one 2-D array per band, read lazily
    sink = Collect(*shape)
    stats = predict_raster(conv3_model, spy, SPEC, sink)
    np.testing.assert_array_equal(sink.out, expected)
    assert sink.next == shape[0]
    rows = [r for a, b in spy.reads for r in range(a, b)]
    assert rows == list(range(shape[0]))  # every input row read exactly once, in order
    assert stats.pixels == shape[0] * shape[1] and stats.batches >= 1
    # a window is skipped exactly when none of its pixels has every band
    ys, xs = (_axis_plan(n, SPEC.window, SPEC.overlap, None) for n in shape)
    valid = (bands != 0).all(axis=0)
    empty = [not valid[y : y + ys[0], x : x + xs[0]].any() for y in ys[2] for x in xs[2]]
    assert stats.windows_skipped == sum(empty)
    assert stats.windows_run == len(empty) - sum(empty) > 0
    assert stats.window_pixels == stats.windows_run * ys[0] * xs[0]  # what the overlap costs
    assert stats.model_seconds is not None and stats.model_seconds > 0
    if shape == (300, 517):  # the zeroed corner holds 2 x 3 whole windows
        assert stats.windows_skipped == 6


@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("shape", [(300, 517), (37, 45), (190, 64)])
def test_pipelined_runs_give_the_same_result(
    conv3_model: Any, shape: tuple[int, int], batch_size: int
) -> None:
    """The model running one batch in a worker thread while the previous one is blended gives
    the same bytes, rows in order, every input row read once."""
    bands = scene(*shape, seed=12)
    bands[:, : shape[0] // 2, : shape[1] // 3] = 0  # skipped windows
    results = {}
    for pipelined in (False, True):
        spec = InferSpec(window=64, overlap=16, batch_size=batch_size, pipelined=pipelined)
        spy = RowsSpy(ArrayReader(bands))
        sink = Collect(*shape)
        stats = predict_raster(conv3_model, spy, spec, sink)
        rows = [r for a, b in spy.reads for r in range(a, b)]
        assert rows == list(range(shape[0])) and sink.next == shape[0]
        results[pipelined] = (sink.out, stats)
    np.testing.assert_array_equal(results[True][0], results[False][0])
    serial, overlapped = results[False][1], results[True][1]
    assert (overlapped.windows_run, overlapped.batches) == (serial.windows_run, serial.batches)
    assert overlapped.window_pixels == serial.window_pixels
    assert overlapped.model_seconds is not None and overlapped.model_seconds > 0
    # rows are finished one batch later: at most one more batch of windows is held, in the
    # input strip and in the accumulator
    assert overlapped.max_buffered_rows <= serial.max_buffered_rows + 2 * 64 * batch_size


def test_pipelined_is_on_for_gpu_sessions_only(conv3_model: Any) -> None:
    class GpuSession:
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    assert not _pipelined(conv3_model, InferSpec())  # a CPU session: ORT has the cores
    assert _pipelined(GpuSession(), InferSpec())
    assert not _pipelined(GpuSession(), InferSpec(pipelined=False))
    assert _pipelined(conv3_model, InferSpec(pipelined=True))
    assert "pipelined" not in json.dumps(InferSpec()._fingerprint_data())  # old keys kept


def test_pipelined_model_errors_surface_and_stop_the_worker(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "nan.onnx", np.full((3, 4, 1, 1), np.nan), np.zeros(3))
    session = open_session(path, threads=1)
    spec = InferSpec(window=64, overlap=16, batch_size=2, pipelined=True)
    sink = Collect(200, 200)
    with pytest.raises(InputError, match="non-finite logits"):
        predict_raster(session, ArrayReader(scene(200, 200, seed=13)), spec, sink)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("eoforge-ort")]
    assert sink.next == 0  # nothing written


def test_predict_to_cog_from_a_geotiff_gives_the_same_bytes(
    conv3_model: Any, tmp_path: Path
) -> None:
    bands = scene(300, 517, seed=10)
    with rasterio.open(
        tmp_path / "src.tif", "w", driver="GTiff", width=517, height=300, count=4,
        dtype="uint16", crs=CRS, transform=rasterio.Affine(*TRANSFORM),
    ) as dst:  # fmt: skip
        dst.write(bands[::-1])  # stored in another band order: the reader reorders
    expected = predict_scene(conv3_model, bands, SPEC)
    digest = write_prediction(expected, CRS, TRANSFORM, tmp_path / "a" / "p.tif")
    with rasterio.open(tmp_path / "src.tif") as src:
        streamed, stats = predict_to_cog(
            conv3_model, RasterioReader(src, [4, 3, 2, 1]), SPEC, tmp_path / "b" / "p.tif",
            CRS, TRANSFORM,
        )  # fmt: skip
    assert streamed == digest  # same COG bytes as writing the whole map at once
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["p.tif"]  # no staging left over
    assert stats.windows_skipped == 0


def test_cog_writer_refuses_bad_rows_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "p.tif"
    with (
        pytest.raises(InputError, match="out of order"),
        CogWriter(out, CRS, TRANSFORM, (8, 4)) as w,
    ):
        w.write_rows(0, np.zeros((2, 4), np.uint8))
        w.write_rows(3, np.zeros((2, 4), np.uint8))
    with (
        pytest.raises(InputError, match="only 2 of 8 rows"),
        CogWriter(out, CRS, TRANSFORM, (8, 4)) as w,
    ):
        w.write_rows(0, np.zeros((2, 4), np.uint8))
    with pytest.raises(InputError, match="uint8"), CogWriter(out, CRS, TRANSFORM, (8, 4)) as w:
        w.write_rows(0, np.zeros((2, 4), np.int16))  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_cog_writer_gives_the_same_bytes_whatever_the_row_blocks(tmp_path: Path) -> None:
    """Rows arrive in blocks that do not line up with the staging file's 16-row strips (a
    window step of 455 rows): the writer holds the partial strip back, and the COG is the same."""
    from eoforge.inference.uncertainty import UncertaintyWriter

    pred = _class_map(203, 150)
    expected = write_prediction(pred, CRS, TRANSFORM, tmp_path / "whole.tif")
    two = np.stack([pred, pred[::-1]])
    digests = set()
    for name, blocks in (("a", (7, 9, 100, 87)), ("b", (16, 32, 155)), ("c", (203,))):
        with CogWriter(tmp_path / f"{name}.tif", CRS, TRANSFORM, pred.shape) as w:
            top = 0
            for n in blocks:
                w.write_rows(top, pred[top : top + n])
                top += n
        assert w.sha256 == expected
        with UncertaintyWriter(tmp_path / f"u{name}.tif", CRS, TRANSFORM, pred.shape) as u:
            top = 0
            for n in blocks:
                u.write_rows(top, two[:, top : top + n])
                top += n
        digests.add(u.sha256)
    assert len(digests) == 1
    with rasterio.open(tmp_path / "ua.tif") as src:  # level-1 DEFLATE with differencing
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert src.compression.name.upper() == "DEFLATE"
        assert np.array_equal(src.read(), two)


def test_readers_refuse_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        ArrayReader(np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="one"):
        ArrayReader([np.zeros((4, 4)), np.zeros((4, 5))])
    with rasterio.open(
        tmp_path / "s.tif", "w", driver="GTiff", width=4, height=4, count=2, dtype="uint16"
    ) as dst:
        dst.write(np.ones((2, 4, 4), np.uint16))
    with rasterio.open(tmp_path / "s.tif") as src, pytest.raises(InputError, match="indexes"):
        RasterioReader(src, [1, 3])


class TiledSample:
    """A virtual scene tiled from a real one: rows exist only while read."""

    def __init__(self, tile: np.ndarray, height: int, width: int) -> None:
        self.tile = tile
        self.shape = (tile.shape[0], height, width)
        self.cols = np.arange(width) % tile.shape[2]

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        return self.tile[:, np.arange(top, bottom) % self.tile.shape[1]][:, :, self.cols]


class CheckTiled:
    """Checks each strip against the tiled prediction of the tile, keeping nothing."""

    def __init__(self, tile_pred: np.ndarray, width: int) -> None:
        self.tile_pred = tile_pred
        self.cols = np.arange(width) % tile_pred.shape[1]
        self.rows = 0

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        expected = self.tile_pred[np.arange(top, top + len(rows)) % self.tile_pred.shape[0]]
        np.testing.assert_array_equal(rows, expected[:, self.cols])
        self.rows += len(rows)


def _streamed_peak(session: Any, tile: np.ndarray, height: int, spec: InferSpec) -> tuple[int, Any]:
    import tracemalloc

    tile_pred = predict_scene(session, tile, spec)  # a per-pixel model: tiling commutes
    sink = CheckTiled(tile_pred, 1536)
    tracemalloc.start()
    try:
        stats = predict_raster(session, TiledSample(tile, height, 1536), spec, sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.rows == height
    return peak, stats


@pytest.mark.parametrize("pipelined", [False, True])
def test_large_scene_streams_with_bounded_memory(
    pixel_model: Any, bundled_catalog: Path, pipelined: bool
) -> None:
    """A 12288 x 1536 scene tiled from the real sample would take ~530 MB as float32 bands +
    probabilities in one piece; streamed, memory does not grow with its height (also with the
    model running in a worker thread)."""
    folder = bundled_catalog / "S2A_33TWM_20230815_0_L2A"
    tile = np.stack(
        [rasterio.open(folder / f"{b}.tif").read(1) for b in ("B02", "B03", "B04", "B08")]
    )
    spec = InferSpec(window=256, overlap=32, batch_size=8, pipelined=pipelined)
    small_peak, _ = _streamed_peak(pixel_model, tile, 1024, spec)
    peak, stats = _streamed_peak(pixel_model, tile, 12288, spec)
    print(f"pipelined={pipelined}: peak {peak / 1e6:.1f} MB (1024 rows: {small_peak / 1e6:.1f} MB)")
    whole_mb = 12288 * 1536 * (4 + 3) * 4 / 1e6
    # independent of the scene height; pipelined, rows finish one batch (here up to two rows of
    # windows) later
    assert stats.max_buffered_rows < (7 if pipelined else 5) * spec.window
    assert peak < 1.2 * small_peak + 2e6, f"peak grew with height: {small_peak} -> {peak}"
    # pipelined: a second batch buffer (input + logits, ~15 MB here) and one batch more of rows
    limit_mb = whole_mb / (7 if pipelined else 10)
    assert peak / 1e6 < limit_mb, f"peak {peak / 1e6:.0f} MB vs {whole_mb:.0f} MB whole"


def test_chunk_row_reader_serves_every_strip_and_decodes_each_chunk_row_once(
    tmp_path: Path,
) -> None:
    import zarr

    from eoforge.inference.scene_io import ChunkRowReader

    rng = np.random.default_rng(5)
    data = rng.integers(1, 4000, (2, 3, 100, 37), dtype=np.uint16)  # (band, time, y, x)
    arrays = []
    for b in range(2):
        arr = zarr.create_array(
            tmp_path / f"b{b}.zarr", shape=(3, 100, 37), chunks=(1, 16, 37), dtype="uint16"
        )
        arr[:] = data[b]
        arrays.append(arr)
    decoded: list[int] = []

    class Counting:
        def __init__(self, arr: Any) -> None:
            self.arr, self.shape, self.chunks = arr, arr.shape, arr.chunks

        def __getitem__(self, key: Any) -> Any:
            decoded.append(key[1].start)
            return self.arr[key]

    reader = ChunkRowReader([Counting(a) for a in arrays], t=1)
    assert reader.shape == (2, 100, 37)
    for top in range(0, 100, 13):  # rows not read yet, a step at a time, as predict_raster asks
        bottom = min(top + 13, 100)
        assert np.array_equal(reader.read_rows(top, bottom), data[:, 1, top:bottom])
    assert sorted(decoded) == sorted(list(range(0, 100, 16)) * 2)  # each chunk row once per band
    decoded.clear()
    overlapping = ChunkRowReader([Counting(a) for a in arrays], t=1, keep=2)
    for top in range(0, 100, 7):  # overlapping strips: two kept chunk rows cover them
        bottom = min(top + 20, 100)
        assert np.array_equal(overlapping.read_rows(top, bottom), data[:, 1, top:bottom])
    assert sorted(decoded) == sorted(list(range(0, 100, 16)) * 2)
    with pytest.raises(InputError):
        ChunkRowReader(arrays, t=3)


def test_nodata_compares_in_the_bands_dtype() -> None:
    from eoforge.inference.windows import _nodata_as

    assert _nodata_as(np.dtype(np.uint16), 0.0) == 0
    assert _nodata_as(np.dtype(np.uint16), 0.0).dtype == np.uint16
    assert _nodata_as(np.dtype(np.int16), -9999) == -9999
    for dtype, nodata in ((np.uint16, -9999), (np.uint16, 0.5), (np.float32, 0.1)):
        assert _nodata_as(np.dtype(dtype), nodata) is None  # no pixel can equal it
    bands = scene(16, 16, seed=4)
    bands[:, 3, 5] = 0
    valid = _RowSource(ArrayReader(bands), 0.0, 16, 16).strip(0)[1]
    assert not valid[3, 5] and valid.sum() == 16 * 16 - 1
    assert _RowSource(ArrayReader(bands), 0.5, 16, 16).strip(0)[1].all()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_rows_sink_sees_every_input_and_class_row_once(
    conv3_model: Any, tmp_path: Path, batch_size: int
) -> None:
    """The drift profile is built from what the predictor read and wrote (the scene is read
    once): every row exactly once, in order, the input as the reader gave it and the classes
    as the COG holds them, whatever the batching."""
    from eoforge.inference.drift import ProfileAccumulator
    from eoforge.inference.drift_scene import TimedProfile, profile_scene

    bands = scene(300, 517, seed=21)
    bands[:, 40:60, 100:200] = 0  # nodata rows: class 255 in both
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    spec = InferSpec(window=64, overlap=16, batch_size=batch_size)
    tif = tmp_path / "p.tif"
    predict_to_cog(
        conv3_model, ArrayReader(bands), spec, tif, CRS, TRANSFORM,
        rows_sink=lambda raw, classes: seen.append((raw.copy(), classes.copy())),
    )  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([r for r, _ in seen], axis=1), bands)
    with rasterio.open(tif) as src:
        np.testing.assert_array_equal(np.concatenate([c for _, c in seen]), src.read(1))
    names, classes = ["blue", "green", "red", "nir"], ["a", "b", "c"]
    streamed = TimedProfile(names, classes)
    for raw, cls in seen:
        streamed.add(raw, cls)
    assert streamed.seconds > 0
    read_back = ProfileAccumulator(names, classes)
    for raw, cls in seen:  # the same blocks, read back: the same profile
        read_back.add(raw, cls)
    assert streamed.profile() == read_back.profile()
    # no cloud class: the blocks do not matter, and it matches the profile read from the COG
    assert streamed.profile() == profile_scene(ArrayReader(bands), tif, names, classes)
