"""The data cube: STAC items -> odc-stac (dask) -> one Zarr v3 group per MGRS tile, written atomically."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from eoforge.errors import InputError, TransientError
from eoforge.stac import item_tile, self_href
from eoforge.storage import staged_dir

__all__ = ["CubeInfo", "cube_fingerprint", "list_tiles", "load_tile", "open_tile", "write_cube"]


@dataclass(frozen=True)
class CubeInfo:
    """What :func:`write_cube` wrote."""

    path: Path
    tiles: dict[str, list[str]]
    """Tile id -> STAC item ids, one per time slice."""
    fingerprint: str
    shape: dict[str, tuple[int, int, int]]
    """Tile id -> (time, y, x)."""


def cube_fingerprint(items: Sequence[dict[str, Any]], variables: Sequence[str]) -> str:
    """sha256 identifying a cube by its inputs: item ids, their ``updated`` times, asset hrefs."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: str(i["id"])):
        props = it.get("properties", {})
        h.update(f"{it['id']}|{props.get('updated') or props.get('datetime')}".encode())
        for v in variables:
            h.update(f"|{v}={it['assets'][v]['href']}".encode())
    h.update(("|".join(variables)).encode())
    return h.hexdigest()


def load_tile(items: Sequence[dict[str, Any]], variables: Sequence[str]) -> xr.Dataset:
    """Lazily load one tile's items with odc-stac on their native grid (dask, one chunk per slice).

    Read failures raise instead of turning into nodata (``fail_on_error=True``).
    """
    import odc.stac
    import pystac

    py_items = [pystac.Item.from_dict(dict(it), preserve_dict=True) for it in items]
    try:
        ds = odc.stac.load(
            py_items,
            bands=list(variables),
            chunks={},
            groupby="solar_day",
            fail_on_error=True,
        )
    except ValueError as exc:
        raise InputError(f"odc-stac cannot load items {[i['id'] for i in items]}: {exc}") from exc
    crs = ds.odc.geobox.crs
    if crs is None or crs.epsg is None:
        raise InputError(f"items {[i['id'] for i in items]} have no EPSG CRS; eoforge needs one.")
    by_day: dict[str, list[str]] = defaultdict(list)
    for it in items:
        by_day[str(it["properties"]["datetime"])[:10]].append(str(it["id"]))
    ids = ["+".join(by_day[str(t)[:10]]) for t in ds.time.values.astype("datetime64[D]")]
    ds.attrs.update(
        crs=f"EPSG:{crs.epsg}",
        transform=list(ds.odc.geobox.transform)[:6],
        item_ids=ids,
        item_hrefs=json.dumps({str(it["id"]): self_href(dict(it)) for it in items}, sort_keys=True),
    )
    return ds


def write_cube(items: Sequence[dict[str, Any]], variables: Sequence[str], out: Path) -> CubeInfo:
    """Load every tile of ``items`` and write them as groups of one Zarr v3 store, atomically.

    Raises:
        TransientError: reading a source raster failed (network, storage); retry later.
        InputError: the items cannot be combined into a cube.
    """
    by_tile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by_tile[item_tile(it)].append(it)
    tiles: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    with staged_dir(out) as staging:
        for tile in sorted(by_tile):
            ds = load_tile(by_tile[tile], variables)
            ds.attrs["tile"] = tile
            ds = ds.drop_vars("spatial_ref", errors="ignore")
            encoding = {v: {"chunks": (1, *ds[v].shape[1:])} for v in ds.data_vars}
            try:
                ds.to_zarr(
                    staging,
                    group=tile,
                    mode="w-",
                    zarr_format=3,
                    consolidated=False,
                    encoding=encoding,
                )
            except (OSError, RuntimeError) as exc:
                if "No such file or directory" in str(exc):
                    raise InputError(
                        f"a source raster of tile {tile} does not exist ({exc}); fix the asset "
                        "hrefs of the STAC items or restore the files."
                    ) from exc
                raise TransientError(
                    f"reading the source rasters of tile {tile} failed ({exc}); retry later."
                ) from exc
            tiles[tile] = list(ds.attrs["item_ids"])
            shapes[tile] = (int(ds.sizes["time"]), int(ds.sizes["y"]), int(ds.sizes["x"]))
    return CubeInfo(
        path=Path(out), tiles=tiles, fingerprint=cube_fingerprint(items, variables), shape=shapes
    )


def list_tiles(cube_path: Path) -> list[str]:
    """Tile groups present in a cube store."""
    import zarr

    if not Path(cube_path).exists():
        raise InputError(f"cube '{cube_path}' does not exist; run the ingest stage first.")
    return sorted(zarr.open_group(str(cube_path), mode="r").group_keys())


def open_tile(cube_path: Path, tile: str) -> xr.Dataset:
    """Open one tile of a cube (lazy), with an ``item_id`` coordinate along time."""
    tiles = list_tiles(cube_path)
    if tile not in tiles:
        raise InputError(
            f"tile '{tile}' is not in cube '{cube_path}' (it has {tiles}); check the tile ids."
        )
    ds = xr.open_zarr(cube_path, group=tile, consolidated=False)
    ids = list(ds.attrs.get("item_ids", []))
    if len(ids) != ds.sizes["time"]:
        raise InputError(f"cube '{cube_path}' tile '{tile}' is torn: item_ids do not match time.")
    out: xr.Dataset = ds.assign_coords(item_id=("time", np.asarray(ids, dtype=object)))
    return out
