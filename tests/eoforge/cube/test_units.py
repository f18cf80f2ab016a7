"""Tests of eoforge.cube.units: one encoding for items of every processing baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from eoforge.cube.units import convert, item_encoding, slice_encoding


def _item(offset: float | None, applied: bool | None = None, scale: float = 1e-4) -> dict[str, Any]:
    band: dict[str, Any] = {"nodata": 0, "data_type": "uint16", "scale": scale}
    if offset is not None:
        band["offset"] = offset
    props = {} if applied is None else {"earthsearch:boa_offset_applied": applied}
    return {
        "id": f"i{offset}{applied}",
        "properties": props,
        "assets": {"red": {"raster:bands": [band]}},
    }


def test_item_encoding_reads_raster_bands_and_earth_search_flag() -> None:
    assert item_encoding(_item(-0.1, applied=False), "red") == (1e-4, -0.1)
    # Earth Search declares -0.1 also where its COGs already had the offset removed
    assert item_encoding(_item(-0.1, applied=True), "red") == (1e-4, 0.0)
    assert item_encoding(_item(None), "red") == (1e-4, 0.0)
    assert item_encoding({"assets": {"scl": {"raster:bands": [{"nodata": 0}]}}}, "scl") is None
    assert item_encoding({"assets": {}}, "red") is None


def test_slice_items_must_agree() -> None:
    assert slice_encoding([_item(-0.1, False), _item(-0.1, False)], "red") == (1e-4, -0.1)
    with pytest.raises(ValueError, match="disagree"):
        slice_encoding([_item(-0.1, False), _item(0.0)], "red")


def test_convert_raw_baseline_values_keeps_nodata_and_clips() -> None:
    raw = np.array([[0, 1000, 1500], [1001, 900, 65535]], dtype=np.uint16)
    out = convert(raw, (1e-4, -0.1), (1e-4, 0.0), nodata=0)
    assert out.dtype == np.uint16
    # nodata stays 0, valid values never become nodata (negative reflectance clips to 1)
    assert out.tolist() == [[0, 1, 500], [1, 1, 64535]]
    same = np.array([5, 6], dtype=np.uint16)
    assert convert(same, (1e-4, 0.0), (1e-4, 0.0), nodata=0) is same
    assert convert(same, None, (1e-4, 0.0), nodata=0) is same


def test_convert_between_scales() -> None:
    landsat = np.array([0, 7273, 43636], dtype=np.uint16)  # C2 L2: 2.75e-5 * v - 0.2
    out = convert(landsat, (2.75e-5, -0.2), (1e-4, 0.0), nodata=0)
    refl = landsat * 2.75e-5 - 0.2
    assert out[0] == 0 and out[1] == 1  # reflectance ~0 -> the smallest valid value
    assert abs(int(out[2]) - round(refl[2] * 1e4)) <= 1
