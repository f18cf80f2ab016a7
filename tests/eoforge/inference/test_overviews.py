"""Overviews reduced while the rows stream in (:mod:`eoforge.inference.overviews`), checked
against GDAL's own MODE and AVERAGE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from eoforge.errors import InputError
from eoforge.inference.cog import CogWriter
from eoforge.inference.overviews import level_shapes, reduce_average, reduce_mode

CRS = "EPSG:32633"
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5100000.0)


def _maps(height: int, width: int) -> dict[str, np.ndarray]:
    """Random classes (ties everywhere) and continuous values, both with nodata patches."""
    rng = np.random.default_rng(7)
    classes = rng.integers(0, 4, (1, height, width)).astype(np.uint8)
    classes[:, 100:141, 7:300] = 255
    classes[:, 301, 401] = 255  # a lone nodata pixel in a 2 x 2 block
    values = rng.integers(0, 255, (2, height, width)).astype(np.uint8)
    values[:, :41, :51] = 255
    values[0, 500:503, 600:700] = 255  # only in the first band
    return {"MODE": classes, "AVERAGE": values}


def _write(path: Path, data: np.ndarray, resampling: str, blocks: tuple[int, ...]) -> str:
    count, height, width = data.shape
    with CogWriter(
        path, CRS, TRANSFORM, (height, width), count=count, overview_resampling=resampling
    ) as writer:
        top = 0
        for n in (*blocks, height):
            n = min(n, height - top)
            if n <= 0:
                break
            rows = data[:, top : top + n]
            writer.write_rows(top, rows[0] if count == 1 else rows)
            top += n
    assert writer.sha256 is not None
    return writer.sha256


@pytest.mark.parametrize("resampling", ["MODE", "AVERAGE"])
def test_streamed_overviews_are_gdals(tmp_path: Path, resampling: str) -> None:
    """On even sizes (where GDAL's COG driver also halves exactly) every level equals what GDAL
    computes itself, nodata and ties (a b / b a) included."""
    data = _maps(1100, 1036)[resampling]
    _write(tmp_path / "ours.tif", data, resampling, (455,))
    profile = {
        "driver": "COG", "width": 1036, "height": 1100, "count": data.shape[0],
        "dtype": "uint8", "nodata": 255, "blocksize": 512, "crs": CRS,
        "transform": rasterio.Affine(*TRANSFORM), "overview_resampling": resampling,
    }  # fmt: skip
    with rasterio.open(tmp_path / "gdal.tif", "w", **profile) as dst:
        dst.write(data)
    for level in range(2):
        with (
            rasterio.open(tmp_path / "ours.tif", overview_level=level) as ours,
            rasterio.open(tmp_path / "gdal.tif", overview_level=level) as gdal,
        ):
            np.testing.assert_array_equal(ours.read(), gdal.read())
    with rasterio.open(tmp_path / "ours.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(src.read(), data)


def test_odd_sizes_round_up_and_blocks_do_not_matter(tmp_path: Path) -> None:
    data = _maps(1101, 1037)["MODE"]
    digests = {
        _write(tmp_path / f"{i}.tif", data, "MODE", blocks)
        for i, blocks in enumerate([(1101,), (455, 455), (7, 9, 1, 100, 87, 16), (1, 1, 1)])
    }
    assert len(digests) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.tif", "1.tif", "2.tif", "3.tif"]
    with rasterio.open(tmp_path / "0.tif") as src:
        assert src.overviews(1) == [2, 4]
    with rasterio.open(tmp_path / "0.tif", overview_level=0) as ovr:
        level = ovr.read(1)
    # rounded up (GDAL's own copy would make 550 x 518): the streamed levels were used
    assert level.shape == (551, 519)
    # the last row and column cover one source row / column (their pair is nodata padding)
    np.testing.assert_array_equal(level[-1], reduce_mode(_pad_row(data[:, -1:]), 255)[0, 0])
    np.testing.assert_array_equal(level[:-1], reduce_mode(data[:, :-1], 255)[0])


def _pad_row(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows, np.full_like(rows, 255)], axis=1)


def test_reductions_by_hand() -> None:
    nd = 255
    blocks = {  # 2 x 2 block (row-major) -> (mode, average)
        (1, 2, 2, 1): (2, 2),  # the pair that reaches two first
        (1, 2, 1, 2): (1, 2),
        (3, 1, 2, 0): (3, 2),  # all different: the first; mean 1.5 rounds up
        (nd, nd, 5, 5): (5, 5),
        (nd, 4, nd, 9): (4, 7),  # mean of the valid pixels only
        (nd, nd, nd, nd): (nd, nd),
    }
    for (a, b, c, d), (mode, mean) in blocks.items():
        block = np.array([[[a, b], [c, d]]], np.uint8)
        assert reduce_mode(block, nd)[0, 0, 0] == mode, (a, b, c, d)
        assert reduce_average(block, nd)[0, 0, 0] == mean, (a, b, c, d)
    values = np.array([[[200, 254], [254, 254]]], np.uint8)  # no overflow in uint8 sums
    assert reduce_average(values, nd)[0, 0, 0] == 241


def test_levels_stop_at_the_block_size() -> None:
    assert level_shapes(10980, 10980, 512) == [
        (5490, 5490), (2745, 2745), (1373, 1373), (687, 687), (344, 344)
    ]  # fmt: skip
    assert level_shapes(512, 512, 512) == []
    assert level_shapes(300, 513, 512) == [(150, 257)]


def test_failed_writer_leaves_no_level_files(tmp_path: Path) -> None:
    data = _maps(1100, 1036)["MODE"]
    with (
        pytest.raises(InputError, match="only 600 of 1100 rows"),
        CogWriter(tmp_path / "p.tif", CRS, TRANSFORM, (1100, 1036)) as writer,
    ):
        writer.write_rows(0, data[0, :600])
    with (
        pytest.raises(RuntimeError, match="boom"),
        CogWriter(tmp_path / "q.tif", CRS, TRANSFORM, (1100, 1036)) as writer,
    ):
        writer.write_rows(0, data[0, :600])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
