"""A field published as an embedding collection (D-band int8 COGs), served by a real rustac
STAC API, searched with pystac-client and ingested back into a field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eoforge.embeddings.collection import ingest_collection, publish_collection
from eoforge.embeddings.field import check_field, list_field_tiles, open_field_tile
from eoforge.errors import InputError
from eoforge.stac.server import served_catalog


def test_published_collection_is_served_and_ingests_back(field: Path, tmp_path: Path) -> None:
    import pystac_client

    collection = publish_collection(field, tmp_path / "catalog")
    items = sorted(tmp_path.glob("catalog/*/*.json"))
    assert len(items) == len(list_field_tiles(field))
    with rasterio.open(items[0].with_suffix(".tif")) as src:
        assert src.count == 16 and src.dtypes[0] == "int8" and src.nodata == -128
    with served_catalog(collection.parent, tmp_path / "served") as api:
        found = [it.to_dict() for it in pystac_client.Client.open(api.url).search(
            collections=["eoforge-embeddings"]).items()]  # fmt: skip
    assert len(found) == len(items)
    out = tmp_path / "ingested.zarr"
    stats = ingest_collection(found, out)
    check_field(out)
    for item in found:
        tile = item["properties"]["eoforge:tile"]
        original, back = open_field_tile(field, tile), open_field_tile(out, item["id"])
        assert back.dims == 16 and back.grid.crs == original.grid.crs
        a, ok_a = original.rows(slice(0, 64))
        b, ok_b = back.rows(slice(0, 64))
        np.testing.assert_array_equal(ok_a, ok_b)
        assert np.abs(a[ok_a] - b[ok_b]).max() < 2 / 127
        assert stats[item["id"]]["dtype"] == "int8"


def test_item_without_the_embedding_asset_is_refused(tmp_path: Path) -> None:
    item = json.loads(json.dumps({"id": "x", "assets": {"visual": {"href": "a.tif"}}}))
    with pytest.raises(InputError, match="no 'embedding' asset"):
        ingest_collection([item], tmp_path / "f.zarr")
    assert not (tmp_path / "f.zarr").exists()
    with pytest.raises(InputError, match="no embedding items"):
        ingest_collection([], tmp_path / "f.zarr")
