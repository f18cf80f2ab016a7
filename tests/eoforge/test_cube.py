from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoforge.cube import cube_fingerprint, list_tiles, open_tile, write_cube
from eoforge.errors import InputError


def test_real_cube_layout(real_cube: Path) -> None:
    assert list_tiles(real_cube) == ["33TWL", "33TWM"]
    ds = open_tile(real_cube, "33TWM")
    assert dict(ds.sizes) == {"time": 5, "y": 512, "x": 512}
    assert ds["blue"].dtype == np.uint16 and ds["scl"].dtype == np.uint8
    assert ds.attrs["crs"] == "EPSG:32633"
    assert len(ds.attrs["transform"]) == 6 and ds.attrs["transform"][0] == 120.0
    assert str(ds["item_id"].values[0]) == "S2B_33TWM_20230810_0_L2A"
    assert int(ds["scl"].isel(time=0).max()) <= 11


def test_unknown_tile(real_cube: Path) -> None:
    with pytest.raises(InputError, match="33XXX"):
        open_tile(real_cube, "33XXX")


def test_fingerprint_follows_updated(real_items: list[dict[str, Any]]) -> None:
    bands = ["blue", "scl"]
    changed = copy.deepcopy(real_items)
    changed[0]["properties"]["updated"] = "2030-01-01T00:00:00Z"
    assert cube_fingerprint(real_items, bands) == cube_fingerprint(
        list(reversed(real_items)), bands
    )
    assert cube_fingerprint(real_items, bands) != cube_fingerprint(changed, bands)


def test_unreadable_asset_leaves_nothing(real_items: list[dict[str, Any]], tmp_path: Path) -> None:
    broken = copy.deepcopy(real_items[:2])
    broken[1]["assets"]["blue"]["href"] = (tmp_path / "gone.tif").as_uri()
    out = tmp_path / "cube.zarr"
    with pytest.raises(InputError, match=r"gone\.tif"):
        write_cube(broken, ["blue", "scl"], out)
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []
