"""The data cube: STAC items -> odc-stac (dask) -> one Zarr v3 group per MGRS tile, written atomically.

Reads never fake data: GDAL retries 429/5xx/resets/timeouts itself (:func:`gdal_options`), and
every (variable, time slice) is read again by eoforge when a read still fails or is cut short
(:func:`retry_reads`), with GDAL's cache of the failed file dropped; a slice that comes back
entirely nodata is refused before anything is published. Every chunk is written (no implicit
fill-value chunks) and the store's root carries a manifest (file count, bytes, sha256), so a
store that lost files reads as torn, never as valid (:func:`verify_cube`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xarray as xr

from eoforge.config import CubeSpec, S3ReadSpec
from eoforge.cube.remote import configure_reads, gdal_options
from eoforge.cube.sources import decoded_local_hrefs, local_path, local_sources, slice_item_ids
from eoforge.errors import ContractViolation, EoforgeError, InputError, TransientError
from eoforge.io.atomic import staged_dir
from eoforge.io.redact import redact, redact_url
from eoforge.stac.aoi import items_meeting
from eoforge.stac.items import item_epsg, item_tile, self_href, validate_item

__all__ = [
    "ENV_READ_ATTEMPTS",
    "ENV_READ_BACKOFF_S",
    "MANIFEST_ATTR",
    "CubeInfo",
    "check_tile_items",
    "cube_fingerprint",
    "gdal_options",
    "list_tiles",
    "load_tile",
    "open_tile",
    "retry_reads",
    "verify_cube",
    "write_cube",
]

#: Attempts per (variable, slice) read before ingest gives up (default 5).
ENV_READ_ATTEMPTS = "EOFORGE_READ_ATTEMPTS"
#: First backoff between read attempts in seconds, doubled each time (default 0.5).
ENV_READ_BACKOFF_S = "EOFORGE_READ_BACKOFF_S"
#: Root attribute of a cube store holding its integrity manifest.
MANIFEST_ATTR = "eoforge_manifest"

T = TypeVar("T")


def _read_attempts() -> int:
    return max(1, int(os.environ.get(ENV_READ_ATTEMPTS, "5")))


def _read_backoff() -> float:
    return max(0.0, float(os.environ.get(ENV_READ_BACKOFF_S, "0.5")))


_NOT_FOUND = ("No such file or directory", "does not exist", "HTTP response code: 404")


def _read_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed raster read (rasterio / GDAL / dask wrapping it)."""
    if isinstance(exc, EoforgeError):
        return False
    return isinstance(exc, OSError | RuntimeError) or type(exc) is Exception


def retry_reads(
    fn: Callable[[], T],
    what: str,
    attempts: int | None = None,
    local_files: Sequence[Path] = (),
) -> T:
    """Call ``fn`` (a read of source rasters) until it succeeds, at most ``attempts`` times.

    Failed reads are retried with exponential backoff and jitter (``EOFORGE_READ_ATTEMPTS``,
    ``EOFORGE_READ_BACKOFF_S``). Any other exception propagates at once. When every source of
    the read is a local file (``local_files``) a failure is not retried: a file that reads
    wrong reads the same way next time (truncated, not a raster), so it is bad input.

    Raises:
        InputError: the last failure says the raster does not exist, or a local file cannot
            be read.
        TransientError: the read still failed after the last attempt.
    """
    n = attempts or _read_attempts()
    backoff = _read_backoff()
    for attempt in range(n):
        try:
            return fn()
        except Exception as exc:
            if not _read_failure(exc):
                raise
            text = redact(str(exc))[:300]
            if local_files:
                names = ", ".join(f"'{p}'" for p in local_files)
                raise InputError(
                    f"source raster {names} ({what}) cannot be read: it is damaged (truncated "
                    f"or not a GeoTIFF): {type(exc).__name__}: {text}. A local file reads the "
                    "same on every try, so eoforge does not retry it: restore or replace the "
                    "file, or leave its STAC item out."
                ) from None
            if attempt == n - 1:
                if any(s in text for s in _NOT_FOUND):
                    raise InputError(
                        f"a source raster of {what} does not exist ({text}); fix the asset hrefs "
                        "of the STAC items or restore the files."
                    ) from None
                raise TransientError(
                    f"reading {what} failed {n} times ({type(exc).__name__}: {text}); the "
                    "storage or network is failing, retry later."
                ) from None
            delay = backoff * 2**attempt
            time.sleep(delay + random.uniform(0, delay / 2))
    raise AssertionError("unreachable")  # pragma: no cover


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


def check_tile_items(tile: str, items: Sequence[dict[str, Any]], variables: Sequence[str]) -> None:
    """Refuse items that cannot form one tile of a cube, before anything is read.

    Raises:
        InputError: an item is malformed or crosses the antimeridian, lacks a variable, the
            items of the tile are in different CRSs, or a local source file does not exist.
    """
    epsgs: dict[int, list[str]] = defaultdict(list)
    for it in items:
        validate_item(it, f"tile {tile}")
        missing = [v for v in variables if v not in it["assets"]]
        if missing:
            raise InputError(
                f"STAC item '{it['id']}' of tile {tile} lacks asset(s) {missing}; choose "
                "variables every item provides."
            )
        for v in variables:
            epsg = item_epsg(it, v)
            if epsg is not None:
                epsgs[epsg].append(str(it["id"]))
            path = local_path(str(it["assets"][v]["href"]))
            if path is not None and not path.is_file():
                raise InputError(
                    f"source raster '{path}' (asset '{v}' of STAC item '{it['id']}') does not "
                    "exist; fix the item's asset hrefs or restore the file."
                )
    if len(epsgs) > 1:
        detail = "; ".join(
            f"EPSG:{e} ({', '.join(sorted(set(ids))[:3])})" for e, ids in sorted(epsgs.items())
        )
        raise InputError(
            f"the items of tile {tile} are in different CRSs: {detail}. One tile must have one "
            "pixel grid; exclude the odd items or fix their proj:epsg."
        )


def load_tile(
    items: Sequence[dict[str, Any]],
    variables: Sequence[str],
    grid: CubeSpec | None = None,
    aoi: Any | None = None,
    label_variables: Sequence[str] = (),
    s3: S3ReadSpec | None = None,
) -> xr.Dataset:
    """Lazily load one tile's items with odc-stac (dask, in ``grid.chunk`` px chunks).

    Without ``grid`` and ``aoi`` the tile keeps its items' native grid. ``aoi`` (lon/lat
    shapely geometry) bounds the load to the part of it the tile's items cover; ``grid`` sets
    resolution, CRS and resampling (class rasters in ``label_variables`` nearest by default).
    Read failures raise instead of turning into nodata (``fail_on_error=True``); GDAL reads with
    :func:`gdal_options` and, for ``s3://`` hrefs, what ``s3`` says the bucket needs.
    """
    import odc.stac
    import pystac

    from eoforge.cube.geobox import load_parameters, tile_area

    configure_reads(s3)
    py_items = [pystac.Item.from_dict(decoded_local_hrefs(it), preserve_dict=True) for it in items]
    params = load_parameters(grid, variables, label_variables, tile_area(items, aoi))
    try:
        ds = odc.stac.load(
            py_items,
            bands=list(variables),
            groupby="solar_day",
            fail_on_error=True,
            **params,
        )
    except ValueError as exc:
        raise InputError(
            f"odc-stac cannot load items {[i['id'] for i in items]}: {redact(str(exc))}"
        ) from exc
    crs = ds.odc.geobox.crs
    if crs is None or crs.epsg is None:
        raise InputError(f"items {[i['id'] for i in items]} have no EPSG CRS; eoforge needs one.")
    ((mid_lon, _),) = ds.odc.geobox.extent.centroid.to_crs("epsg:4326").points  # as odc-stac
    ids = slice_item_ids(items, ds.time.values, float(mid_lon))
    ds.attrs.update(
        crs=f"EPSG:{crs.epsg}",
        transform=list(ds.odc.geobox.transform)[:6],
        item_ids=ids,
        item_hrefs=json.dumps(
            {str(it["id"]): _public(self_href(dict(it))) for it in items}, sort_keys=True
        ),
    )
    return ds


def _public(href: str | None) -> str | None:
    return redact_url(href) if href else None


def _nodata_failure(tile: str, item_id: str, variable: str, nodata: Any) -> ContractViolation:
    return ContractViolation(
        "cube",
        [
            {
                "expectation": "expect_column_values_to_be_between",
                "column": "valid_fraction",
                "kwargs": {"min_value": 0, "strict_min": True},
                "offending": [
                    {
                        "tile": tile,
                        "item_id": item_id,
                        "variable": variable,
                        "valid_fraction": 0.0,
                        "nodata": nodata,
                    }
                ],
            }
        ],
    )


def _read_with_retries(
    fn: Callable[[], T], what: str, slice_ids: str, variable: str, hrefs: dict[str, dict[str, str]]
) -> T:
    """:func:`retry_reads` of one block of (variable, slice): not retried when every source
    is a local file (a damaged file reads the same way next time)."""
    return retry_reads(fn, what, local_files=local_sources(hrefs, slice_ids, variable))


def _store_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / "zarr.json")


def _manifest(root: Path) -> dict[str, Any]:
    from eoforge.io.atomic import sha256_file

    files = _store_files(root)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "sha256": h.hexdigest(),
    }


def write_cube(
    items: Sequence[dict[str, Any]],
    variables: Sequence[str],
    out: Path,
    grid: CubeSpec | None = None,
    aoi: Any | None = None,
    label_variables: Sequence[str] = (),
    s3: S3ReadSpec | None = None,
    attrs: dict[str, Any] | None = None,
) -> CubeInfo:
    """Load every tile of ``items`` and write them as groups of one Zarr v3 store, atomically.

    ``grid`` (default :class:`~eoforge.config.CubeSpec`) sets resolution, CRS, resampling,
    chunking and units; ``aoi`` (lon/lat shapely geometry) bounds each tile's pixels to the
    part of the area its items cover. ``label_variables`` are class rasters (never harmonised
    or interpolated unless the spec names a resampling for them); ``s3`` says how ``s3://``
    hrefs are read (requester pays, anonymous, profile, region, endpoint); ``attrs`` are added
    to the root group's attributes (before the manifest pins the files).

    The store is published (renamed into place) only once every slice was read and checked;
    its root attribute ``eoforge_manifest`` pins its files (see :func:`verify_cube`).

    Raises:
        TransientError: reading a source raster still failed after the retries; retry later.
        InputError: the items cannot be combined into a cube (see :func:`check_tile_items`).
        ContractViolation: a slice of a variable is entirely nodata.
    """
    import zarr

    from eoforge.cube.geobox import common_grid
    from eoforge.cube.stream import slice_items, write_tile

    meeting = items_meeting(items, aoi)
    if not meeting:
        raise InputError(
            f"none of the items {[str(it['id']) for it in items][:5]} meets the area of "
            "interest; widen stac.bbox / stac.aoi or search again."
        )
    by_tile: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in meeting:
        by_tile[item_tile(it)].append(it)
    for tile in sorted(by_tile):
        check_tile_items(tile, by_tile[tile], variables)
    epsgs = [e for it in meeting if (e := item_epsg(it)) is not None]
    grid = common_grid(grid or CubeSpec.model_validate({}), meeting, variables, epsgs, aoi)
    tiles: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    with staged_dir(out) as staging, zarr.config.set({"array.write_empty_chunks": True}):
        for tile in sorted(by_tile):
            ds = load_tile(by_tile[tile], variables, grid, aoi, label_variables, s3)
            ds.attrs["tile"] = tile
            ds = ds.drop_vars("spatial_ref", errors="ignore")
            hrefs = {
                str(it["id"]): {v: str(it["assets"][v]["href"]) for v in variables}
                for it in by_tile[tile]
            }
            write_tile(
                ds,
                tile,
                staging,
                slice_items(by_tile[tile], ds),
                grid,
                functools.partial(_read_with_retries, hrefs=hrefs),
                _nodata_failure,
            )
            tiles[tile] = list(ds.attrs["item_ids"])
            shapes[tile] = (int(ds.sizes["time"]), int(ds.sizes["y"]), int(ds.sizes["x"]))
        root = zarr.open_group(str(staging), mode="r+")
        if attrs:
            root.attrs.update(attrs)
        root.attrs[MANIFEST_ATTR] = _manifest(staging)
    return CubeInfo(
        path=Path(out), tiles=tiles, fingerprint=cube_fingerprint(items, variables), shape=shapes
    )


def verify_cube(cube_path: Path, deep: bool = False) -> None:
    """Check that a cube store is whole: its files match the manifest written with it.

    Without a manifest (a store of an older eoforge) every chunk of every array must exist.

    Args:
        cube_path: the store.
        deep: also compare the sha256 of every file (reads the whole store).

    Raises:
        InputError: the store is missing, torn or modified; delete it and re-run ingest.
    """
    import zarr

    root_path = Path(cube_path)
    if not (root_path / "zarr.json").is_file():
        raise InputError(
            f"cube '{cube_path}' does not exist or is not a Zarr store; run the ingest stage."
        )
    manifest = zarr.open_group(str(root_path), mode="r").attrs.get(MANIFEST_ATTR)
    fix = "delete it and re-run the ingest stage."
    if isinstance(manifest, dict):
        files = _store_files(root_path)
        got = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
        want = {k: manifest.get(k) for k in got}
        if got != want or (deep and _manifest(root_path)["sha256"] != manifest.get("sha256")):
            raise InputError(
                f"cube '{cube_path}' is torn or was modified after it was written (manifest "
                f"{manifest}, found {got}{' and other bytes' if got == want else ''}); {fix}"
            )
        return
    group = zarr.open_group(str(root_path), mode="r")
    for path, arr in _arrays(group):
        missing = _missing_chunks(root_path / path, arr)
        if missing:
            raise InputError(
                f"cube '{cube_path}' is torn: array '{path}' lacks {len(missing)} chunk(s) "
                f"(e.g. {missing[0]}); {fix}"
            )


def _arrays(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    import zarr

    out: list[tuple[str, Any]] = []
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            out.append((path, member))
        else:
            out += _arrays(member, f"{path}/")
    return out


def _missing_chunks(array_dir: Path, arr: Any) -> list[str]:
    import itertools
    import math

    grid = [range(math.ceil(s / c)) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    missing = []
    for idx in itertools.product(*grid):
        key = "c/" + "/".join(str(i) for i in idx) if idx else "c"
        if not (array_dir / key).is_file():
            missing.append(key)
    return missing


def list_tiles(cube_path: Path) -> list[str]:
    """Tile groups present in a cube store."""
    import zarr

    if not Path(cube_path).exists():
        raise InputError(f"cube '{cube_path}' does not exist; run the ingest stage first.")
    return sorted(zarr.open_group(str(cube_path), mode="r").group_keys())


def open_tile(cube_path: Path, tile: str) -> xr.Dataset:
    """Open one tile of a cube (lazy), with an ``item_id`` coordinate along time.

    The store is checked first (:func:`verify_cube`): a torn store is never read as valid.
    """
    tiles = list_tiles(cube_path)
    verify_cube(Path(cube_path))
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
