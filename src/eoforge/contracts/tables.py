"""Stage tables: summarise each stage's output as a small pandas table for its contract.

One row per STAC item (:func:`items_table`), cube slice (:func:`cube_table`), chip
(:func:`chips_table`) or prediction COG (:func:`predictions_table`); the columns are what the
``contracts/definitions/<stage>.yaml`` expectations check (see :mod:`eoforge.contracts.validation`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eoforge.errors import InputError

__all__ = ["chips_table", "cube_table", "items_table", "predictions_table"]

_SPLITS = ("train", "val", "test")
_PREDICTION_NODATA = 255
_MGRS_IN_ID = re.compile(r"_(\d{1,2}[C-X][A-Z]{2})_")


def _epsg(props: Mapping[str, Any]) -> int | None:
    """EPSG code from ``proj:epsg`` or ``proj:code``; None (flagged by the contract) if unusable."""
    code = props.get("proj:code")
    raw = props.get("proj:epsg")
    if raw is None and isinstance(code, str) and code.upper().startswith("EPSG:"):
        raw = code.split(":", 1)[1]
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


def _tile(props: Mapping[str, Any]) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code:
        return code.removeprefix("MGRS-")
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    if all(p is not None for p in parts):
        return "".join(str(p) for p in parts)
    tile = props.get("s2:mgrs_tile")
    return str(tile) if tile else None


def items_table(items: Sequence[Mapping[str, Any]], bands: Sequence[str]) -> pd.DataFrame:
    """One row per STAC item (as a dict, e.g. ``pystac.Item.to_dict()``).

    Columns: ``id``, ``collection``, ``datetime`` (string; ``start_datetime`` for range
    items), ``epsg`` (``proj:epsg`` or ``proj:code`` of the item, else of its first asset that
    has one), ``cloud_cover``, ``n_missing_bands``, ``missing_bands`` (comma separated, ``""``
    when none), ``tile`` (MGRS tile, e.g. ``33TWL``).

    Args:
        items: STAC item dicts.
        bands: asset keys every item must carry.
    """
    rows = []
    for item in items:
        props = item.get("properties") or {}
        assets = item.get("assets") or {}
        epsg = _epsg(props)
        if epsg is None:  # proj v2 allows asset-level projection only
            epsg = next((e for a in assets.values() if (e := _epsg(a)) is not None), None)
        missing = [b for b in bands if b not in assets]
        cloud = props.get("eo:cloud_cover")
        rows.append(
            {
                "id": item.get("id"),
                "collection": item.get("collection"),
                "datetime": props.get("datetime") or props.get("start_datetime"),
                "epsg": epsg,
                "cloud_cover": None if cloud is None else float(cloud),
                "n_missing_bands": len(missing),
                "missing_bands": ",".join(missing),
                "tile": _tile(props),
            }
        )
    columns = [
        "id", "collection", "datetime", "epsg", "cloud_cover",
        "n_missing_bands", "missing_bands", "tile",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["epsg"] = table["epsg"].astype("Int64")
    table["cloud_cover"] = table["cloud_cover"].astype("float64")
    return table


def _high_quantile(values: np.ndarray[Any, Any], q: float) -> float:
    if values.size == 0:
        return math.nan
    if values.dtype.kind == "u":  # a histogram is O(n), sorting is not
        cdf = np.cumsum(np.bincount(values.ravel()))
        return float(np.searchsorted(cdf, q * values.size))
    return float(np.quantile(values, q))


def _slice_stats(arr: np.ndarray[Any, Any]) -> list[dict[str, float]]:
    """Per leading index of a (time, y, x) array: statistics over valid (non-zero) pixels."""
    valid = arr != 0
    if arr.dtype.kind == "f":
        valid &= np.isfinite(arr)
    n_pixels = arr.shape[1] * arr.shape[2]
    stats = []
    for t in range(arr.shape[0]):
        values = arr[t][valid[t]]
        has = values.size > 0
        stats.append(
            {
                "valid_fraction": values.size / n_pixels if n_pixels else 0.0,
                "min": float(values.min()) if has else math.nan,
                "max": float(values.max()) if has else math.nan,
                "mean": float(values.mean(dtype=np.float64)) if has else math.nan,
                "q999": _high_quantile(values, 0.999),
            }
        )
    return stats


def _slice_ids(ds: Any) -> list[str]:
    """STAC item id of each time slice: ``item_ids`` attr (eoforge.cube.build) or variable."""
    n_time = int(ds.sizes.get("time", 0))
    ids = ds.attrs.get("item_ids")
    if isinstance(ids, list) and len(ids) == n_time:
        return [str(i) for i in ids]
    if "item_id" in ds.variables:
        return [str(v) for v in ds["item_id"].values]
    if "time" in ds.variables:  # no ids recorded: name slices by time
        return [str(v) for v in ds["time"].values]
    return [str(t) for t in range(n_time)]


def _streamed_slice_stats(arr: Any, t: int) -> dict[str, float]:
    """Statistics of slice ``t`` of a (time, y, x) unsigned-integer zarr array over valid
    (non-zero) pixels, read one chunk row at a time (memory bounded by the chunk), equal to
    :func:`_slice_stats` of the whole slice."""
    height, width = int(arr.shape[1]), int(arr.shape[2])
    step = int(arr.chunks[1]) if getattr(arr, "chunks", None) else 1024
    # one pass a value: the histogram of every value, 0 included, gives the count, sum, min and
    # max of the valid ones (a gather of the valid values and four reductions took 2.3x as long
    # on a 10980 px tile's band)
    hist = np.zeros(1, np.int64)
    for y in range(0, height, step):
        chunk_row = np.asarray(arr[t, y : y + step, :])
        # bincount widens to 8 bytes a value: a few rows at a time
        for sub in range(0, chunk_row.shape[0], 256):
            counts = np.bincount(chunk_row[sub : sub + 256].reshape(-1))
            if counts.size > hist.size:
                counts[: hist.size] += hist
                hist = counts
            else:
                hist[: counts.size] += counts
    hist[0] = 0
    count = int(hist.sum())
    present = np.flatnonzero(hist)
    low = int(present[0]) if present.size else None
    high = int(present[-1]) if present.size else None
    total = int(hist @ np.arange(hist.size, dtype=np.int64))
    n_pixels = height * width
    if not count:
        nan = math.nan
        return {"valid_fraction": 0.0, "min": nan, "max": nan, "mean": nan, "q999": nan}
    return {
        "valid_fraction": count / n_pixels,
        "min": float(low if low is not None else math.nan),
        "max": float(high if high is not None else math.nan),
        "mean": total / count,
        "q999": float(np.searchsorted(np.cumsum(hist), 0.999 * count)),
    }


def cube_table(cube_path: Path | str, label_variables: Sequence[str] = ("scl",)) -> pd.DataFrame:
    """One row per (tile, time slice, variable) of a cube store (ADR 0001 layout).

    Columns: ``tile``, ``item_id`` (from the group's ``item_ids`` attribute or ``item_id``
    variable), ``variable``, ``role`` (``label`` for ``label_variables``,
    else ``band``), ``dtype``, ``valid_fraction`` (pixels != 0), ``min``, ``max``, ``mean``,
    ``q999`` (99.9th percentile: a maximum robust to a few odd pixels) over valid pixels (NaN
    when none), ``height``, ``width``, ``crs``. Unsigned-integer variables (what ingest writes)
    are read one chunk row at a time, so memory is bounded by the chunk, not the tile.

    Args:
        cube_path: the ``cube.zarr`` directory.
        label_variables: variables holding class codes rather than reflectance.
    """
    import xarray as xr
    import zarr

    rows: list[dict[str, Any]] = []
    root = zarr.open_group(str(cube_path), mode="r")
    for tile in sorted(root.group_keys()):
        group = root[tile]
        # chunks=None: plain lazily indexed numpy arrays, no dask graph for a one-shot read
        with xr.open_zarr(str(cube_path), group=tile, chunks=None, consolidated=False) as ds:
            item_ids = _slice_ids(ds)
            crs = ds.attrs.get("crs")
            for name in sorted(str(n) for n in ds.data_vars):
                var = ds[name]
                if var.ndim != 3 or var.dims[0] != "time":
                    continue
                raw = group[name] if isinstance(group, zarr.Group) else None
                if isinstance(raw, zarr.Array) and var.dtype.kind == "u":
                    stats = [_streamed_slice_stats(raw, t) for t in range(var.shape[0])]
                else:
                    stats = _slice_stats(np.asarray(var.values))
                for t, slice_stats in enumerate(stats):
                    rows.append(
                        {
                            "tile": tile,
                            "item_id": item_ids[t],
                            "variable": name,
                            "role": "label" if name in label_variables else "band",
                            "dtype": str(var.dtype),
                            **slice_stats,
                            "height": int(var.shape[1]),
                            "width": int(var.shape[2]),
                            "crs": None if crs is None else str(crs),
                        }
                    )
    columns = [
        "tile", "item_id", "variable", "role", "dtype", "valid_fraction",
        "min", "max", "mean", "q999", "height", "width", "crs",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _tile_of(item_id: str, split_tiles: Sequence[str]) -> str | None:
    match = _MGRS_IN_ID.search(f"_{item_id}_")
    if match:
        return match.group(1)
    return split_tiles[0] if len(split_tiles) == 1 else None


def _read_array(group: Any, name: str, store: Path | str) -> np.ndarray[Any, Any]:
    import zarr

    arr = group.get(name)
    if not isinstance(arr, zarr.Array):
        raise InputError(
            f"chips store '{store}': group '{group.path}' has no array '{name}'; "
            "rebuild the chips (layout in docs/adr/0001-store-layout.md)."
        )
    return np.asarray(arr[...])


def chips_table(chips_path: Path | str) -> pd.DataFrame:
    """One row per chip of a chips store (ADR 0001 layout); missing or empty splits are skipped.

    Columns: ``split``, ``index`` (within the split), ``tile`` (parsed from the item id),
    ``item_id``, ``nodata_fraction`` (pixels where any band == 0), ``labelled_fraction``
    (pixels where y != ignore_index), ``n_classes_present``, ``n_invalid_labels`` (pixels whose
    label is neither a class index nor ignore_index), ``x_min``, ``x_max`` (over valid pixels).

    Args:
        chips_path: the ``chips.zarr`` directory.
    """
    import zarr

    root = zarr.open_group(str(chips_path), mode="r")
    attrs: dict[str, Any] = dict(root.attrs)
    ignore = int(attrs.get("ignore_index", 255))
    n_classes = len(attrs.get("classes", []))
    present = set(root.group_keys())
    frames = []
    for split in _SPLITS:
        if split not in present:
            continue
        group = root[split]
        if not isinstance(group, zarr.Group):
            raise InputError(f"chips store '{chips_path}': '{split}' is not a group (ADR 0001).")
        if "x" not in group.array_keys():  # a split with no chips may have no arrays
            continue
        x = _read_array(group, "x", chips_path)
        if x.shape[0] == 0:
            continue
        y = _read_array(group, "y", chips_path)
        split_attrs: dict[str, Any] = dict(group.attrs)
        n = x.shape[0]
        nodata = (x == 0).any(axis=1)  # (n, size, size)
        labelled = y != ignore
        in_range = y < n_classes
        classes_present = np.zeros(n, dtype=np.int64)
        for c in range(n_classes):
            classes_present += (y == c).any(axis=(1, 2))
        big = np.iinfo(x.dtype).max if x.dtype.kind in "ui" else np.inf
        # nodata pixels replaced by a neutral value so they do not win min / max
        x_min = np.where(nodata[:, None], big, x).min(axis=(1, 2, 3))
        x_max = np.where(nodata[:, None], 0, x).max(axis=(1, 2, 3))
        all_nodata = nodata.all(axis=(1, 2))
        item_ids = [str(i) for i in split_attrs.get("item_ids", [""] * n)]
        split_tiles = [str(t) for t in split_attrs.get("tiles", [])]
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "index": np.arange(n),
                    "tile": [_tile_of(i, split_tiles) for i in item_ids],
                    "item_id": item_ids,
                    "nodata_fraction": nodata.mean(axis=(1, 2)),
                    "labelled_fraction": labelled.mean(axis=(1, 2)),
                    "n_classes_present": classes_present,
                    "n_invalid_labels": (labelled & ~in_range).sum(axis=(1, 2)),
                    "x_min": np.where(all_nodata, np.nan, x_min.astype(np.float64)),
                    "x_max": np.where(all_nodata, np.nan, x_max.astype(np.float64)),
                }
            )
        )
    columns = [
        "split", "index", "tile", "item_id", "nodata_fraction", "labelled_fraction",
        "n_classes_present", "n_invalid_labels", "x_min", "x_max",
    ]  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def _class_stats(src: Any, strip_rows: int = 1024) -> tuple[int, int | None]:
    """(nodata pixel count, largest class) of band 1, read strip by strip (bounded memory)."""
    from rasterio.windows import Window

    nodata = 0
    top: int | None = None
    for row in range(0, src.height, strip_rows):
        band = src.read(1, window=Window(0, row, src.width, min(strip_rows, src.height - row)))
        is_nodata = band == _PREDICTION_NODATA
        nodata += int(is_nodata.sum())
        if not is_nodata.all():
            value = int(band[~is_nodata].max())
            top = value if top is None else max(top, value)
    return nodata, top


def predictions_table(prediction_tifs: Sequence[Path | str], num_classes: int) -> pd.DataFrame:
    """One row per prediction GeoTIFF (uint8 class indices, 255 = nodata).

    Columns: ``path``, ``item_id`` (file stem), ``dtype``, ``crs`` (e.g. ``EPSG:32633``),
    ``height``, ``width``, ``nodata_fraction``, ``max_class`` (over non-nodata pixels, NaN when
    none), ``n_classes`` (= ``num_classes``, so a contract can compare the two), ``tiled``,
    ``overviews`` (count on band 1), ``is_cog`` (written in GDAL's COG layout, or tiled with
    overviews or small enough to fit one tile).

    Args:
        prediction_tifs: the COG files.
        num_classes: number of classes of the model.
    """
    import rasterio

    rows = []
    for tif in prediction_tifs:
        path = Path(tif)
        with rasterio.open(path) as src:
            nodata_count, max_class = _class_stats(src)
            height, width = src.height, src.width
            overviews = len(src.overviews(1))
            # GDAL tags files written by its COG driver (ghost header + tiles + ordering).
            gdal_cog = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"
            # rasterio reports tiled=False when one tile covers the whole width, so a small
            # single-tile COG only shows as tiled through the layout tag.
            tiled = gdal_cog or bool(src.profile.get("tiled", False))
            block_h, block_w = src.block_shapes[0]
            one_block = src.height <= block_h and src.width <= block_w
            crs = src.crs.to_string() if src.crs else None
            dtype = src.dtypes[0]
        size = height * width
        rows.append(
            {
                "path": str(path),
                "item_id": path.stem,
                "dtype": dtype,
                "crs": crs,
                "height": height,
                "width": width,
                "nodata_fraction": nodata_count / size if size else 1.0,
                "max_class": float(max_class) if max_class is not None else math.nan,
                "n_classes": int(num_classes),
                "tiled": tiled,
                "overviews": overviews,
                "is_cog": gdal_cog or (tiled and (overviews > 0 or one_block)),
            }
        )
    columns = [
        "path", "item_id", "dtype", "crs", "height", "width", "nodata_fraction",
        "max_class", "n_classes", "tiled", "overviews", "is_cog",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
