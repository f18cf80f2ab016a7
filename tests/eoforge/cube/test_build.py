from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoforge.cube.build import cube_fingerprint, list_tiles, open_tile, write_cube
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


def test_retry_reads_retries_read_failures_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from eoforge.cube.build import retry_reads
    from eoforge.errors import TransientError

    monkeypatch.setenv("EOFORGE_READ_BACKOFF_S", "0")
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("CURL error: transfer closed with 1234 bytes remaining to read")
        return 7

    assert retry_reads(flaky, "band 'blue' of X", attempts=3) == 7 and len(calls) == 3
    calls.clear()
    with pytest.raises(TransientError, match=r"band 'blue' of X.*failed 2 times"):
        retry_reads(flaky, "band 'blue' of X", attempts=2)
    with pytest.raises(InputError, match="does not exist"):
        retry_reads(lambda: (_ for _ in ()).throw(OSError("HTTP response code: 404")), "X", 2)
    with pytest.raises(ValueError):  # not a read failure: raised at once
        retry_reads(lambda: (_ for _ in ()).throw(ValueError("bug")), "X", 5)


def test_gdal_options_default_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from eoforge.cube.build import gdal_options

    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY", raising=False)
    assert gdal_options()["GDAL_HTTP_MAX_RETRY"] == "5"
    assert "/vsicurl/" in gdal_options()["CPL_VSIL_CURL_NON_CACHED"]
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    assert gdal_options()["GDAL_HTTP_MAX_RETRY"] == "9"


def test_cube_manifest_detects_a_modified_store(real_cube: Path, tmp_path: Path) -> None:
    import shutil

    from eoforge.cube.build import verify_cube

    copy_ = tmp_path / "cube.zarr"
    shutil.copytree(real_cube, copy_)
    verify_cube(copy_, deep=True)
    chunk = copy_ / "33TWL" / "blue" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the deep check sees it
    chunk.write_bytes(bytes(data))
    verify_cube(copy_)
    with pytest.raises(InputError, match="torn or was modified"):
        verify_cube(copy_, deep=True)
    (copy_ / "33TWL" / "stray").write_text("x")
    with pytest.raises(InputError, match="torn or was modified"):
        verify_cube(copy_)
