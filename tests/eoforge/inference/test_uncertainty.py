"""Uncertainty of a prediction: entropy and margin rows, the streamed COG, the STAC asset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pystac
import pytest
import rasterio
from onnx import TensorProto, helper, numpy_helper

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.item import prediction_item
from eoforge.inference.predict import predict_to_cog
from eoforge.inference.scene_io import NODATA_CLASS, ArrayReader
from eoforge.inference.session import open_session
from eoforge.inference.uncertainty import (
    UNCERTAINTY_SCALE,
    add_uncertainty_asset,
    uncertainty_rows,
)

CRS = "EPSG:32633"
TRANSFORM = (120.0, 0.0, 500000.0, 0.0, -120.0, 5000040.0)


def _pixel_model(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """logits = W @ (image / 1e4) + b per pixel (a 1x1 conv)."""
    k, c = weight.shape
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["image", "scale"], ["x"]),
            helper.make_node("Conv", ["x", "w", "b"], ["logits"]),
        ],
        "pixel",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k, "H", "W"])],
        initializer=[
            numpy_helper.from_array(weight.reshape(k, c, 1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
            numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_entropy_and_margin_of_known_scores() -> None:
    scores = np.zeros((3, 1, 4), np.float32)
    scores[:, 0, 0] = 1 / 3  # uniform: entropy 1, margin 0
    scores[:, 0, 1] = (5.0, 0.0, 0.0)  # certain (unnormalised): entropy 0, margin 1
    scores[:, 0, 2] = (0.5, 0.5, 0.0)  # a tie of two: entropy log2/log3, margin 0
    valid = np.array([[True, True, True, False]])
    out = uncertainty_rows(scores, valid)
    assert out.shape == (2, 1, 4) and out.dtype == np.uint8
    assert out[:, 0, 0].tolist() == [254, 0]
    assert out[:, 0, 1].tolist() == [0, 254]
    assert out[0, 0, 2] == round(np.log(2) / np.log(3) * 254) and out[1, 0, 2] == 0
    assert out[:, 0, 3].tolist() == [NODATA_CLASS, NODATA_CLASS]
    with pytest.raises(InputError, match=r"\(K, n, W\)"):
        uncertainty_rows(scores[0], valid)


def test_streamed_uncertainty_cog_matches_the_softmax(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(size=(4, 3)), rng.normal(size=4)
    session = open_session(_pixel_model(tmp_path / "m.onnx", weight, bias), threads=1)
    bands = rng.integers(1, 6000, (3, 150, 130), dtype=np.uint16)
    bands[:, 5:9, 7:20] = 0  # nodata
    spec = InferSpec(window=64, overlap=16, batch_size=4)
    plain, _ = predict_to_cog(session, ArrayReader(bands), spec, tmp_path / "a.tif", CRS, TRANSFORM)
    unc = tmp_path / "unc" / "a.tif"
    sha, stats = predict_to_cog(
        session, ArrayReader(bands), spec, tmp_path / "b.tif", CRS, TRANSFORM, uncertainty_tif=unc
    )
    assert sha == plain  # the class map does not change
    assert stats.windows_run > 1
    logits = np.einsum("kc,chw->khw", weight, bands / 1e4) + bias[:, None, None]
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    entropy = -(p * np.log(p)).sum(0) / np.log(4)
    top = np.sort(p, axis=0)
    margin = top[-1] - top[-2]
    with rasterio.open(unc) as src:
        assert src.count == 2 and src.dtypes == ("uint8", "uint8")
        assert src.nodata == NODATA_CLASS and src.overviews(1) == []  # small: no overviews
        got = src.read()
    valid = (bands != 0).all(0)
    assert (got[:, ~valid] == NODATA_CLASS).all()
    assert np.abs(got[0][valid] * UNCERTAINTY_SCALE - entropy[valid]).max() <= UNCERTAINTY_SCALE
    assert np.abs(got[1][valid] * UNCERTAINTY_SCALE - margin[valid]).max() <= UNCERTAINTY_SCALE
    # uncertain pixels are where the margin is small: the two bands agree on the order
    assert np.corrcoef(got[0][valid], got[1][valid])[0, 1] < -0.5


def test_uncertainty_asset_of_the_prediction_item(tmp_path: Path) -> None:
    pred = tmp_path / "predictions" / "s.tif"
    unc = tmp_path / "uncertainty" / "s.tif"
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(2, 3)), rng.normal(size=2)
    session = open_session(_pixel_model(tmp_path / "m.onnx", weight, bias), threads=1)
    bands = rng.integers(1, 6000, (3, 40, 40), dtype=np.uint16)
    spec = InferSpec(window=32, overlap=8, batch_size=2)
    predict_to_cog(session, ArrayReader(bands), spec, pred, CRS, TRANSFORM, uncertainty_tif=unc)
    source: dict[str, Any] = {
        "id": "s",
        "properties": {"datetime": "2024-07-01T10:00:00Z"},
        "links": [{"rel": "self", "href": "https://example.test/items/s"}],
    }
    item = prediction_item(pred, source, ["a", "b"], None, CRS, TRANSFORM, (40, 40))
    add_uncertainty_asset(item, unc, "../uncertainty/s.tif")
    parsed = pystac.Item.from_dict(item)
    asset = parsed.assets["uncertainty"]
    assert asset.roles == ["data", "uncertainty"]
    assert [b["name"] for b in asset.extra_fields["raster:bands"]] == ["entropy", "margin"]
    assert asset.extra_fields["file:size"] == unc.stat().st_size
    with pytest.raises(InputError, match="does not exist"):
        add_uncertainty_asset(item, tmp_path / "missing.tif", "x")


class _Rows:
    """A writer that keeps only a row count and a checksum (nothing scene-sized)."""

    def __init__(self) -> None:
        self.rows = 0
        self.total = 0

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        assert top == self.rows
        self.rows += rows.shape[-2]
        self.total += int(rows.astype(np.int64).sum())


def test_uncertainty_streams_with_the_class_map_in_bounded_memory(tmp_path: Path) -> None:
    from eoforge.inference.predict import predict_raster

    rng = np.random.default_rng(5)
    session = open_session(
        _pixel_model(tmp_path / "m.onnx", rng.normal(size=(3, 3)), rng.normal(size=3)), threads=1
    )
    tall = rng.integers(1, 6000, (3, 3000, 96), dtype=np.uint16)  # 3000 rows, window 64
    spec = InferSpec(window=64, overlap=16, batch_size=4)
    alone = predict_raster(session, ArrayReader(tall), spec, _Rows())
    classes, unc = _Rows(), _Rows()
    both = predict_raster(session, ArrayReader(tall), spec, classes, uncertainty=unc)
    assert unc.rows == classes.rows == 3000 and unc.total > 0
    # the uncertainty rides on the same strips: no more rows held than for the class map alone
    assert both.max_buffered_rows == alone.max_buffered_rows < 300
