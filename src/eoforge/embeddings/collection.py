"""Embedding collections as served: one STAC item per tile whose one asset is a D-band COG
(int8, AlphaEarth-style ``vector = value / 127``, nodata -128; or float32, NaN nodata).

:func:`publish_collection` writes a field in that shape (a static catalog rustac can serve);
:func:`ingest_collection` loads such items, from any STAC API, into a field store: one
``(D, y, x)`` variable per tile, read window by window (bounded memory).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from eoforge.cube.grid import TileGrid
from eoforge.embeddings.field import CHUNK, list_field_tiles, open_field_tile, quantize
from eoforge.embeddings.rasters import RowCog, cog_asset, raster_item
from eoforge.errors import InputError
from eoforge.io.atomic import staged_dir, write_json_atomic

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
                           properties={"eoforge:embedding_dims": tile.dims})  # fmt: skip
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


def _asset_path(item: dict[str, Any]) -> str:
    asset = item.get("assets", {}).get(ASSET)
    if not asset:
        raise InputError(
            f"item '{item.get('id')}' has no '{ASSET}' asset (it has "
            f"{sorted(item.get('assets', {}))}); an embedding collection needs one D-band COG."
        )
    href = str(asset["href"])
    return href.removeprefix("file://")


def ingest_collection(
    items: Sequence[dict[str, Any]], out: Path, rows: int = CHUNK
) -> dict[str, Any]:
    """Load embedding items into a field store at ``out`` (one tile group per item).

    Raises:
        InputError: an item without the asset, or a COG that is not int8/float.
    """
    if not items:
        raise InputError("no embedding items to ingest; check the collection and the search.")
    stats: dict[str, Any] = {}
    with staged_dir(Path(out)) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for item in items:
            with rasterio.open(_asset_path(item)) as src:
                dtype, d = src.dtypes[0], src.count
                if dtype not in ("int8", "float32", "float64"):
                    raise InputError(
                        f"item '{item['id']}': embedding COG is {dtype}; expected int8 or float."
                    )
                name = str(item["id"])
                grid = TileGrid(name, src.crs.to_string(), src.transform, src.height, src.width)
                group = root.create_group(name)
                group.attrs.update({"crs": grid.crs, "transform": list(grid.transform)[:6], "dims": d,
                                    "item_ids": [name], "source": "ingested embedding collection",
                                    "quantization": "vector = embedding * scale (per pixel); scale 0 = no data"})  # fmt: skip
                emb = group.create_array("embedding", shape=(d, grid.height, grid.width), dtype="int8",
                                         chunks=(d, CHUNK, CHUNK), fill_value=0)  # fmt: skip
                scale = group.create_array("scale", shape=(grid.height, grid.width), dtype="float32",
                                           chunks=(CHUNK, CHUNK), fill_value=0.0)  # fmt: skip
                valid = 0
                for r0 in range(0, grid.height, rows):
                    h = min(rows, grid.height - r0)
                    raw = src.read(window=Window(0, r0, grid.width, h))  # type: ignore[no-untyped-call]
                    if dtype == "int8":
                        ok = (raw != INT8_NODATA).all(axis=0)
                        vec = raw.astype(np.float32) / 127.0
                    else:
                        ok = np.isfinite(raw).all(axis=0)
                        vec = np.nan_to_num(raw.astype(np.float32))
                    norm = np.linalg.norm(vec, axis=0)
                    ok &= norm > 0
                    vec = vec / np.where(norm > 0, norm, 1.0)
                    q, s = quantize(np.moveaxis(vec, 0, -1))
                    s[~ok] = 0.0
                    emb[:, r0 : r0 + h, :] = np.moveaxis(q, -1, 0)
                    scale[r0 : r0 + h, :] = s
                    valid += int(ok.sum())
                stats[name] = {
                    "dims": d,
                    "dtype": dtype,
                    "coverage": valid / (grid.height * grid.width),
                }
        root.attrs.update({"eoforge:kind": "embedding-field", "dims": next(iter(stats.values()))["dims"],
                           "encoder_sha256": "", "source_items": json.dumps([i["id"] for i in items])})  # fmt: skip
    return stats
