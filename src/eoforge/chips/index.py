"""The chip index: one GeoParquet row per chip (footprint, split, quality, class histogram).

It lives next to the chip store (``chips.zarr`` -> ``chips-index.parquet``), is written before
the store is published, and the store's root attribute ``index_sha256`` pins the exact index
bytes, so a stale index from a killed run is detected. The data contract
``contracts/definitions/chip_index.yaml`` checks it (:func:`enforce_chip_index`), including the split
guarantee: no chip overlaps, in space, a chip of another split.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from eoforge.cube.grid import TileGrid
from eoforge.errors import InputError
from eoforge.io.stores import read_bytes, sibling

if TYPE_CHECKING:
    import geopandas as gpd

    from eoforge.contracts.validation import ContractResult

__all__ = [
    "INDEX_CRS",
    "chip_index_frame",
    "chip_index_table",
    "chip_index_uri",
    "cross_split_overlaps",
    "enforce_chip_index",
    "index_bytes",
    "read_chip_index",
]

#: CRS of the index's ``geometry`` column; exact tile-CRS bounds are columns ``x_min``...
INDEX_CRS = "EPSG:4326"


def chip_index_uri(chips_uri: str | Path) -> str:
    """Where the index of a chip store lives: ``<dir>/<name without .zarr>-index.parquet``."""
    name = str(chips_uri).rstrip("/").rsplit("/", 1)[-1]
    stem = name[: -len(".zarr")] if name.endswith(".zarr") else name
    return sibling(chips_uri, f"{stem}-index.parquet")


def chip_index_frame(
    split: str,
    grid: TileGrid,
    item_ids: Sequence[str],
    times: NDArray[np.datetime64],
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    size: int,
    stats: Mapping[str, NDArray[Any]],
    histogram: NDArray[np.int64],
    classes: Sequence[str],
    ignore_index: int,
) -> pd.DataFrame:
    """Index rows (without geometry and ``index``) of the chips of one tile and split.

    Args:
        split: split name.
        grid: the tile's grid.
        item_ids: item id per time slice of the tile.
        times: acquisition time per slice.
        t: time index of each chip.
        r: top row of each chip.
        c: left column of each chip.
        size: chip edge in pixels.
        stats: ``nodata_fraction``, ``labelled_fraction``, ``cloud_fraction`` per chip.
        histogram: ``(n, 256)`` pixel counts per label value.
        classes: class names (index = label value).
        ignore_index: the unlabelled label value.
    """
    bounds = grid.window_bounds(r, c, size)
    frame = pd.DataFrame(
        {
            "split": split,
            "tile": grid.tile,
            "item_id": np.asarray(item_ids, dtype=object)[t] if len(t) else [],
            "time_index": t.astype(np.int32),
            "datetime": times[t] if len(t) else np.array([], "datetime64[ns]"),
            "row": r.astype(np.int32),
            "col": c.astype(np.int32),
            "size": np.int32(size),
            "tile_crs": grid.crs,
            "x_min": bounds[:, 0],
            "y_min": bounds[:, 1],
            "x_max": bounds[:, 2],
            "y_max": bounds[:, 3],
            "nodata_fraction": stats["nodata_fraction"],
            "labelled_fraction": stats["labelled_fraction"],
            "cloud_fraction": stats["cloud_fraction"],
        }
    )
    for k, name in enumerate(classes):
        frame[f"px_{name}"] = histogram[:, k].astype(np.int32)
    frame["px_ignore"] = histogram[:, ignore_index].astype(np.int32)
    return frame


def _to_geoframe(frame: pd.DataFrame) -> gpd.GeoDataFrame:
    """Attach footprints reprojected to :data:`INDEX_CRS` (corner points, exact per CRS)."""
    import geopandas as gpd
    import shapely
    from pyproj import Transformer

    geoms = np.empty(len(frame), dtype=object)
    for crs, rows in frame.groupby("tile_crs").indices.items():
        sub = frame.iloc[rows]
        tr = Transformer.from_crs(str(crs), INDEX_CRS, always_xy=True)
        xs = np.stack([sub.x_min, sub.x_max, sub.x_max, sub.x_min], axis=1)
        ys = np.stack([sub.y_min, sub.y_min, sub.y_max, sub.y_max], axis=1)
        lon, lat = tr.transform(xs, ys)
        geoms[rows] = shapely.polygons(np.stack([lon, lat], axis=-1))
    return gpd.GeoDataFrame(frame, geometry=list(geoms), crs=INDEX_CRS)


def index_bytes(frame: pd.DataFrame) -> bytes:
    """GeoParquet bytes of the index (deterministic for equal content)."""
    buf = io.BytesIO()
    _to_geoframe(frame.reset_index(drop=True)).to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()


def read_chip_index(
    chips_uri: str | Path, storage_options: Mapping[str, Any] | None = None
) -> gpd.GeoDataFrame:
    """Read the index of a chip store, checking it belongs to the store.

    Raises:
        InputError: the index is missing, or its bytes differ from the store's
            ``index_sha256`` (a stale index of an earlier build).
    """
    import hashlib

    import geopandas as gpd

    from eoforge.io.stores import open_group

    uri = chip_index_uri(chips_uri)
    data = read_bytes(uri, storage_options)
    expected = open_group(chips_uri, "r", storage_options).attrs.get("index_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise InputError(
            f"chip index '{uri}' does not belong to chip store '{chips_uri}' (sha256 differs, "
            "left by an interrupted build?); rebuild the chips."
        )
    return gpd.read_parquet(io.BytesIO(data))


def cross_split_overlaps(index: pd.DataFrame) -> NDArray[np.int64]:
    """For each chip, how many chips of *other* splits share ground with it (positive area).

    Chips in one CRS are compared exactly on their tile-CRS bounds; chips in different CRSs
    on their :data:`INDEX_CRS` footprints.
    """
    import shapely

    n = len(index)
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    split = index["split"].to_numpy()
    crs = index["tile_crs"].to_numpy()
    boxes = shapely.box(
        *(index[k].to_numpy(np.float64) for k in ("x_min", "y_min", "x_max", "y_max"))
    )
    left, right = shapely.STRtree(boxes).query(boxes, predicate="intersects")
    hit = (split[left] != split[right]) & (crs[left] == crs[right])
    if hit.any():  # bounds intersect: count only those that share area, not just an edge
        area = shapely.area(shapely.intersection(boxes[left[hit]], boxes[right[hit]]))
        np.add.at(out, left[hit][area > 0], 1)
    if len(set(crs)) > 1 and "geometry" in index:
        geo = np.asarray(index.geometry)
        left, right = shapely.STRtree(geo).query(geo, predicate="intersects")
        cross = (split[left] != split[right]) & (crs[left] != crs[right])
        area = shapely.area(shapely.intersection(geo[left[cross]], geo[right[cross]]))
        tiny = 1e-9 * shapely.area(geo[left[cross]])
        np.add.at(out, left[cross][area > tiny], 1)
    return out


def chip_index_table(index: pd.DataFrame) -> pd.DataFrame:
    """The table the ``chip_index`` contract checks: the index plus derived columns.

    Added columns: ``chip_pixels`` (size^2), ``hist_total`` (sum of the class histogram and
    ``px_ignore``), ``n_overlaps_other_split`` (:func:`cross_split_overlaps`),
    ``footprint_ok`` (non-empty valid geometry), ``window_ok`` (bounds match size x pixel).
    """
    import shapely

    table = pd.DataFrame(index.drop(columns=["geometry"], errors="ignore")).copy()
    px = [c for c in table.columns if c.startswith("px_")]
    table["chip_pixels"] = (table["size"].astype(np.int64)) ** 2
    table["hist_total"] = table[px].sum(axis=1).astype(np.int64) if px else 0
    table["n_overlaps_other_split"] = cross_split_overlaps(index)
    if "geometry" in index:
        geo = np.asarray(index.geometry)
        table["footprint_ok"] = shapely.is_valid(geo) & ~shapely.is_empty(geo)
    else:
        table["footprint_ok"] = False
    widths = table["x_max"] - table["x_min"]
    heights = table["y_max"] - table["y_min"]
    table["window_ok"] = (widths > 0) & np.isclose(widths, heights)
    return table


def enforce_chip_index(
    chips_uri: str | Path,
    parameters: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    contracts_dir: Path | str | None = None,
) -> ContractResult:
    """Check a chip store's index against ``contracts/definitions/chip_index.yaml``.

    Args:
        chips_uri: the chip store.
        parameters: contract parameters (``max_nodata_fraction``, ``min_labelled_fraction``
            of the run's ChipSpec); defaults from the file.
        storage_options: fsspec options for a remote store.
        contracts_dir: contracts directory (default: the shipped ones).

    Raises:
        ContractViolation: the index breaks the contract.
        InputError: the index is missing or stale.
    """
    from eoforge.contracts.validation import enforce

    table = chip_index_table(read_chip_index(chips_uri, storage_options))
    return enforce("chip_index", table, contracts_dir, parameters)
