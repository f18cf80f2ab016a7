"""Scoring strip by strip gives the whole-scene confusion matrices and the quicklooks' pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eoforge.cube.tiles import open_cube_tile
from eoforge.errors import InputError
from eoforge.inference.cog import write_prediction
from eoforge.runs.report import _decimate
from eoforge.runs.scoring import score_scene
from eoforge.training.metrics import confusion_matrix

H, W, K = 45, 38, 3
TRANSFORM = [10.0, 0.0, 0.0, 0.0, -10.0, 0.0]


def _tile(path: Path, chunk_rows: int) -> None:
    rng = np.random.default_rng(2)
    data = {
        b: (("time", "y", "x"), rng.integers(1, 3000, (2, H, W), dtype=np.uint16))
        for b in ("red", "green", "blue")
    }
    ds = xr.Dataset(
        data,
        coords={"time": np.arange(2).astype("datetime64[D]")},
        attrs={"crs": "EPSG:32633", "transform": TRANSFORM, "item_ids": ["a", "b"]},
    )
    enc = {v: {"chunks": (1, chunk_rows, W)} for v in ds.data_vars}
    ds.to_zarr(path, group="T1", mode="w-", zarr_format=3, consolidated=False, encoding=enc)


@pytest.mark.parametrize("chunk_rows", [7, 45])
def test_strips_give_the_whole_scene_scores(tmp_path: Path, chunk_rows: int) -> None:
    _tile(tmp_path / "c.zarr", chunk_rows)
    tile = open_cube_tile(str(tmp_path / "c.zarr"), "T1")
    rng = np.random.default_rng(3)
    truth = rng.integers(0, K, (H, W)).astype(np.uint8)
    truth[:5] = 255  # ignored rows
    pred = np.where(rng.random((H, W)) < 0.7, truth, rng.integers(0, K, (H, W))).astype(np.uint8)
    base = rng.integers(0, K, (H, W)).astype(np.uint8)
    pred[pred == 255] = 0
    base[-3:] = 255  # baseline nodata
    write_prediction(pred, "EPSG:32633", TRANSFORM, tmp_path / "p.tif")
    write_prediction(base, "EPSG:32633", TRANSFORM, tmp_path / "b.tif")
    asked: list[tuple[int, int]] = []

    def truth_rows(top: int, bottom: int) -> np.ndarray:
        asked.append((top, bottom))
        return truth[top:bottom]

    score = score_scene(
        tile, 1, truth_rows, tmp_path / "p.tif", tmp_path / "b.tif", K, 255,
        rgb_bands=("red", "green", "blue"), max_size=10,
    )  # fmt: skip
    assert asked == list(tile.strips())
    assert np.array_equal(score.cm_model, confusion_matrix(truth, pred, K, 255))
    assert np.array_equal(score.cm_base, confusion_matrix(truth, base, K, 255))
    assert np.array_equal(score.truth, _decimate(truth, 10))
    assert np.array_equal(score.pred, _decimate(pred, 10))
    assert np.array_equal(score.base, _decimate(base, 10))
    rgb = np.stack([np.asarray(tile.group[b][1]) for b in ("red", "green", "blue")])
    assert score.rgb is not None and np.array_equal(score.rgb, _decimate(rgb, 10))


def test_a_class_map_of_another_size_is_refused(tmp_path: Path) -> None:
    _tile(tmp_path / "c.zarr", 9)
    tile = open_cube_tile(str(tmp_path / "c.zarr"), "T1")
    small = np.zeros((H - 1, W), np.uint8)
    write_prediction(small, "EPSG:32633", TRANSFORM, tmp_path / "p.tif")
    with pytest.raises(InputError, match=r"p\.tif' is 44x38.*predict the scene again"):
        score_scene(
            tile, 0, lambda a, b: np.zeros((b - a, W), np.uint8), tmp_path / "p.tif",
            tmp_path / "p.tif", K, 255,
        )  # fmt: skip
