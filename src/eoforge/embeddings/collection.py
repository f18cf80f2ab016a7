"""Embedding collections as served: one STAC item per tile whose one asset is a D-band COG
(int8, AlphaEarth-style ``vector = value / 127``, nodata -128; or float32, NaN nodata).

:func:`publish_collection` writes a field in that shape (a static catalog rustac can serve);
:func:`ingest_collection` loads such items, from any STAC API, through the cube path
(odc-stac): one ``(time, channel, y, x)`` cube variable per tile, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.embeddings.field import CHUNK, list_field_tiles, open_field_tile
from eoforge.embeddings.rasters import RowCog, cog_asset, raster_item
from eoforge.errors import InputError
from eoforge.io.atomic import write_json_atomic

__all__ = ["ASSET", "ingest_collection", "publish_collection"]

#: Asset key of the embedding COG in each item.
ASSET = "embedding"
INT8_NODATA = -128


def publish_collection(
    field: str | Path, out: Path, collection_id: str = "eoforge-embeddings"
) -> Path:
    """Write ``out/collection.json`` and ``out/<item>/<item>.json`` + ``<item>.tif`` per tile."""
    out = Path(out)
    ids = []
    for name in list_field_tiles(field):
        tile = open_field_tile(field, name)
        item_id = f"{collection_id}-{name}"
        tif = out / item_id / f"{item_id}.tif"
        with RowCog(tif, tile.grid, dtype="int8", count=tile.dims, nodata=INT8_NODATA,
                    resampling="NEAREST",
                    descriptions=[f"A{i:02d}" for i in range(tile.dims)]) as cog:  # fmt: skip
            for sl, vec, ok in tile.blocks():
                q = np.clip(np.rint(vec * 127.0), -127, 127).astype(np.int8)
                q[~ok] = INT8_NODATA
                cog.write(sl, np.moveaxis(q, -1, 0))
        assert cog.sha256 is not None
        asset = cog_asset(tif, cog.sha256, ["data", "embeddings"],
                          **{"raster:bands": [{"data_type": "int8", "nodata": INT8_NODATA,
                                               "scale": 1 / 127.0}] * tile.dims})  # fmt: skip
        item = raster_item(item_id, tile.grid, {ASSET: asset},
                           datetime="2023-08-20T00:00:00Z",
                           properties={"eoforge:embedding_dims": tile.dims,
                                       "grid:code": f"MGRS-{name}"})  # fmt: skip
        item["stac_extensions"].append("https://stac-extensions.github.io/grid/v1.1.0/schema.json")
        item["collection"] = collection_id
        write_json_atomic(tif.with_suffix(".json"), item)
        ids.append(item)
    xs = [i["bbox"] for i in ids]
    bbox = [
        min(b[0] for b in xs),
        min(b[1] for b in xs),
        max(b[2] for b in xs),
        max(b[3] for b in xs),
    ]
    collection = {
        "type": "Collection", "stac_version": "1.1.0", "id": collection_id,
        "description": "Per-pixel embeddings (int8, vector = value / 127) written by eoforge.",
        "license": "proprietary",
        "links": [{"rel": "item", "href": f"./{i['id']}/{i['id']}.json",
                   "type": "application/geo+json"} for i in ids],
        "extent": {"spatial": {"bbox": [bbox]},
                   "temporal": {"interval": [["2023-08-01T00:00:00Z", "2023-08-31T00:00:00Z"]]}},
    }  # fmt: skip
    write_json_atomic(out / "collection.json", collection)
    return out / "collection.json"


def ingest_collection(
    items: Sequence[dict[str, Any]], out: Path, chunk: int = CHUNK
) -> dict[str, Any]:
    """Load embedding items through the cube path into a cube store at ``out``: per tile, the
    ``embedding`` asset's D bands as one ``(time, channel, y, x)`` variable (odc-stac, chunk by
    chunk), which every product reads through :func:`~eoforge.embeddings.tiles.open_embedding_tiles`.

    Raises:
        InputError: no items, an item without the asset or its band list, or a COG that is not
            int8 / float.
    """
    from eoforge.cube.channels import asset_channels, write_channel_cube

    if not items:
        raise InputError("no embedding items to ingest; check the collection and the search.")
    dims = asset_channels(items, ASSET)
    for item in items:
        kinds = {str(b.get("data_type", "")) for b in item["assets"][ASSET].get("raster:bands", [])}
        bad = kinds - {"int8", "float32", "float64", ""}
        if bad:
            raise InputError(
                f"item '{item['id']}': embedding asset is {sorted(bad)}; expected int8 or float "
                "components (AlphaEarth-style int8 value / 127, or float32)."
            )
    stats = write_channel_cube(items, ASSET, Path(out), chunk=chunk)
    return {tile: {"dims": dims, "dtype": row["dtype"], "coverage": row["coverage"],
                   "slices": row["shape"][0]} for tile, row in stats.items()}  # fmt: skip
