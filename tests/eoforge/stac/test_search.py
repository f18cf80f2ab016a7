from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import StacSpec
from eoforge.errors import InputError, TransientError
from eoforge.stac.items import item_tile, self_href
from eoforge.stac.search import search_items
from eoforge.stac.server import prepare_served_catalog


def test_prepared_catalog_has_no_item_links_and_absolute_hrefs(
    bundled_catalog: Path, tmp_path: Path
) -> None:
    files = prepare_served_catalog(bundled_catalog, tmp_path)
    coll = json.loads(files[0].read_text())
    assert not [lk for lk in coll["links"] if lk["rel"] == "item"]
    assert len(files) == 11
    item = json.loads(files[1].read_text())
    for asset in item["assets"].values():
        assert asset["href"].startswith("file:///")
        assert Path(asset["href"].removeprefix("file://")).is_file()


def test_search_returns_every_item_sorted(real_items: list[dict[str, Any]]) -> None:
    assert len(real_items) == 10
    tiles = [item_tile(it) for it in real_items]
    assert tiles == sorted(tiles)
    assert set(tiles) == {"33TWL", "33TWM"}
    assert all(self_href(it) for it in real_items)


def test_cloud_cover_filter_is_client_side(stac_api: str) -> None:
    items = search_items(StacSpec(max_cloud_cover=5), stac_api)
    assert 0 < len(items) < 10
    assert all(it["properties"]["eo:cloud_cover"] <= 5 for it in items)


def test_empty_search_is_an_input_error(stac_api: str) -> None:
    with pytest.raises(InputError, match="returned no items"):
        search_items(StacSpec(datetime="2019-01-01/2019-01-31"), stac_api)


def test_missing_band_names_the_item_and_band(stac_api: str) -> None:
    with pytest.raises(InputError, match=r"lacks required band asset\(s\) \['swir16'\]"):
        search_items(StacSpec(bands=("blue", "swir16")), stac_api)


def test_unreachable_api_is_transient_after_bounded_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = StacSpec(max_retries=1, backoff_factor=0.01, timeout_s=2)
    with pytest.raises(TransientError, match="unreachable"):
        search_items(spec, f"http://127.0.0.1:{port}/")


def test_malformed_item_json_is_named(bundled_catalog: Path, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    shutil.copytree(bundled_catalog, cat)
    bad = next(cat.glob("*/S2*_L2A.json"))
    bad.chmod(0o644)
    bad.write_text("{not json")
    with pytest.raises(InputError, match=bad.name):
        prepare_served_catalog(cat, tmp_path / "served")


def test_item_tile_from_mgrs_fields() -> None:
    item = {
        "id": "x",
        "properties": {"mgrs:utm_zone": 3, "mgrs:latitude_band": "T", "mgrs:grid_square": "WL"},
    }
    assert item_tile(item) == "03TWL"
    with pytest.raises(InputError, match="tile"):
        item_tile({"id": "y", "properties": {}})
