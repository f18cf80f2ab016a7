"""A field published as an embedding collection (D-band int8 COGs), served by a real rustac
STAC API, searched with pystac-client and ingested back through odc-stac as a cube variable
with D channels, which the products read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eoforge.cube.build import verify_cube
from eoforge.cube.channels import open_channel_tile
from eoforge.embeddings.collection import ingest_collection, publish_collection
from eoforge.embeddings.field import list_field_tiles, open_field_tile
from eoforge.embeddings.tiles import ChannelEmbeddingTile, open_embedding_tiles
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
    verify_cube(out, deep=True)
    back_tiles = {t.grid.tile: t for t in open_embedding_tiles(out)}
    assert sorted(back_tiles) == list_field_tiles(field)
    for item in found:
        tile = item["properties"]["eoforge:tile"]
        raw = open_channel_tile(out, tile, "embedding")
        assert raw.array.shape[:2] == (1, 16) and raw.array.dtype == np.int8
        assert raw.item_ids == [item["id"]] and raw.nodata == -128
        original, back = open_field_tile(field, tile), back_tiles[tile]
        assert isinstance(back, ChannelEmbeddingTile)
        assert back.dims == 16 and back.grid == original.grid
        a, ok_a = original.rows(slice(0, 64))
        b, ok_b = back.rows(slice(0, 64))
        np.testing.assert_array_equal(ok_a, ok_b)
        assert np.abs(a[ok_a] - b[ok_b]).max() < 2 / 127
        assert stats[tile]["dtype"] == "int8" and stats[tile]["slices"] == 1
        rows, cols = np.nonzero(ok_a)
        at, ok_at = back.vectors_at(rows[:50], cols[:50])
        assert ok_at.all()
        np.testing.assert_array_equal(at, b[rows[:50], cols[:50]])


def test_item_without_the_embedding_asset_is_refused(tmp_path: Path) -> None:
    item = json.loads(json.dumps({"id": "x", "assets": {"visual": {"href": "a.tif"}}}))
    with pytest.raises(InputError, match="no 'embedding' asset"):
        ingest_collection([item], tmp_path / "f.zarr")
    assert not (tmp_path / "f.zarr").exists()
    with pytest.raises(InputError, match="no embedding items"):
        ingest_collection([], tmp_path / "f.zarr")


def test_cli_publish_ingest_and_products_on_the_ingested_field(field: Path, tmp_path: Path) -> None:
    """`eoforge embed publish` -> rustac -> `embed ingest` -> clusters / similarity / classify."""
    import geopandas as gpd
    from pyproj import Transformer
    from typer.testing import CliRunner

    from eoforge.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["embed", "publish", str(field), "--out", str(tmp_path / "cat")])
    assert res.exit_code == 0, res.output
    ingested = tmp_path / "ingested.zarr"
    with served_catalog(tmp_path / "cat", tmp_path / "served") as api:
        res = runner.invoke(app, ["embed", "ingest", "--api-url", api.url, "--collection",
                                  "eoforge-embeddings", "--datetime", "2024",
                                  "--out", str(tmp_path / "none.zarr")])  # fmt: skip
        assert res.exit_code == 2 and "no embedding items" in res.output
        res = runner.invoke(app, ["embed", "ingest", "--api-url", api.url, "--collection",
                                  "eoforge-embeddings", "--datetime", "2023-08",
                                  "--out", str(ingested)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "16 x int8, 1 slice(s)" in res.output

    res = runner.invoke(app, ["embed", "clusters", "--field", str(ingested), "--k", "3",
                              "--out", str(tmp_path / "k")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "k" / "clusters").glob("*.tif"))) == 2
    assert json.loads((tmp_path / "k" / "provenance.json").read_text())["outputs"]

    tile = open_embedding_tiles(ingested)[0]
    x0, y0, x1, y1 = tile.grid.bounds
    lon, lat = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True).transform(
        (x0 + x1) / 2, (y0 + y1) / 2
    )
    res = runner.invoke(app, ["embed", "similarity", "--field", str(ingested), "--query",
                              f"{lon},{lat}", "--out", str(tmp_path / "s")])  # fmt: skip
    assert res.exit_code == 0, res.output

    xs = [x0 + 1000, x0 + 20000, x1 - 5000, x1 - 30000]
    ys = [y0 + 1000, y1 - 20000, y0 + 9000, y1 - 3000]
    pts = gpd.GeoDataFrame({"class": ["vegetation", "bare", "vegetation", "bare"]},
                           geometry=gpd.points_from_xy(xs, ys), crs=tile.grid.crs)  # fmt: skip
    pts.to_file(tmp_path / "pts.gpkg")
    res = runner.invoke(app, ["embed", "classify", "--field", str(ingested), "--labels",
                              str(tmp_path / "pts.gpkg"), "--out", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "classify" / "linear.onnx").is_file()
    res = runner.invoke(app, ["embed", "classify", "--field", str(ingested), "--out",
                              str(tmp_path / "c2")])  # fmt: skip
    assert res.exit_code == 2 and "no labels" in res.output
    assert not (tmp_path / "c2").exists()
