"""Chips: cut the cube into fixed-size patches with labels, filtered and split, into ``chips.zarr``.

Each tile is read once; windows are chosen by :mod:`eoforge.chips.sampling` (grid, random or
class-balanced; split by tile or by block, optionally in time) and gathered strip by strip
into raw spill files (:mod:`eoforge.chips.spill`); each split is then written into (optionally
sharded) Zarr v3 arrays a slab at a time, in a seeded random order so that any run of chips is
a random sample (what the loader in :mod:`eoforge.chips.torch_data` relies on). The chip index
(:mod:`eoforge.chips.index`) is written next to the store. The store layout extends ADR 0001
(see ADR 0002).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from numpy.typing import NDArray
from zarr.codecs import BloscCodec

from eoforge.chips.index import chip_index_frame, chip_index_uri, cross_split_overlaps, index_bytes
from eoforge.chips.sampling import TileSample, sample_tile
from eoforge.chips.spill import SplitSpill, band_stats, spill_folder, write_shuffled
from eoforge.chips.splits import SPLITS, assign_blocks, split_regions, temporal_mask
from eoforge.chips.strip_labels import StripLabels, strip_labels
from eoforge.chips.strips import (
    band_dtype,
    gather_windows,
    iter_band_windows,
    nodata_mask,
    tile_labels,
    value_mask,
)
from eoforge.config import ChipSpec, LabelSpec, SamplingSpec
from eoforge.cube.grid import exclude_covered
from eoforge.cube.tiles import CubeTile, list_cube_tiles, open_cube_tile
from eoforge.errors import InputError, InternalError
from eoforge.io.atomic import transient_storage_errors
from eoforge.io.stores import is_remote, open_group, staged_store, write_bytes_atomic
from eoforge.labels.classes import CubeClassMap, LabelSource

__all__ = [
    "ChipsInfo",
    "build_chips",
    "gather_windows",
    "grid_origins",
    "read_split",
    "tile_labels",
]

#: Layout version written to the root attribute ``chip_store_version`` (ADR 0002).
STORE_VERSION = 2
#: Chips per Zarr chunk, the unit the loader decodes: 16 x 4 x 64 x 64 uint16 = 512 kB raw.
#: One chip per chunk is ~9x slower to load and 6x slower to build; sharding (``shard_chips``)
#: is optional, ~15% slower to read with zarr-python 3.1 (measurements in ADR 0002).
CHUNK_CHIPS = 16
# lz4 + bit shuffle: uint16 reflectance compresses ~2x and decodes at memory speed.
_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


@dataclass(frozen=True)
class ChipsInfo:
    """What :func:`build_chips` wrote."""

    path: Path | str
    counts: dict[str, int]
    rejected: dict[str, int]
    band_mean: list[float]
    band_std: list[float]
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    index_path: str = ""
    """The chip index (GeoParquet) next to the store."""
    label_source: str = ""
    """Description of the label source used."""


def grid_origins(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a regular grid of ``size`` chips stepping by ``stride``.

    Raises:
        InputError: the chip is larger than the scene.
    """
    if size > height or size > width:
        raise InputError(
            f"chip size {size} is larger than the scene ({height}x{width}); choose chips.size <= "
            f"{min(height, width)}."
        )
    return [
        (r, c)
        for r in range(0, height - size + 1, stride)
        for c in range(0, width - size + 1, stride)
    ]


def _split_of(tile: str, col: int, size: int, width: int, spec: ChipSpec) -> str | None:
    """Split of a grid chip under the tile split (kept for callers of the first layout)."""
    if tile in spec.test_tiles:
        return "test"
    if tile not in spec.train_tiles:
        return None
    boundary = round(width * (1 - spec.val_fraction))
    if col + size <= boundary:
        return "train"
    if col >= boundary:
        return "val"
    return None  # straddles the block boundary: would leak space between train and val


def _histograms(y: NDArray[np.uint8]) -> NDArray[np.int64]:
    """``(n, 256)`` pixel counts of each label value per chip (one bincount for all chips)."""
    n = len(y)
    flat = y.reshape(n, -1).astype(np.int64) + (np.arange(n, dtype=np.int64) * 256)[:, None]
    return np.bincount(flat.ravel(), minlength=n * 256).reshape(n, 256)


#: Chips whose labels are gathered, counted and indexed at once (bounds that memory).
_LABEL_BATCH = 4096


def _cut_tile(
    tile: CubeTile,
    sample: TileSample,
    bands: Sequence[str],
    cube_y: NDArray[np.uint8] | StripLabels,
    size: int,
    labels: LabelSpec,
    spills: dict[str, SplitSpill],
) -> None:
    """Spill the sampled windows of one tile, by split, in sample order after the chips of the
    tiles before (bands strip by strip, labels a batch at a time; labels by rows are cut
    strip by strip too)."""
    position = np.empty(len(sample), dtype=np.int64)  # each chip's place in its split's spill
    # labels by rows: every label chip of the tile in one pass (n x size x size bytes)
    cut_y = (
        cube_y.windows(sample.t, sample.r, sample.c, size)
        if isinstance(cube_y, StripLabels)
        else None
    )
    for code, name in enumerate(SPLITS):
        sel = np.flatnonzero(sample.split == code)
        if sel.size == 0:
            continue
        spill = spills[name]
        first = spill.reserve(sel.size)
        position[sel] = first + np.arange(sel.size)
        t, r, c = sample.t[sel], sample.r[sel], sample.c[sel]
        spill.origin.append(np.stack([t, r, c], axis=1).astype(np.int32))
        for lo in range(0, sel.size, _LABEL_BATCH):
            part = slice(lo, lo + _LABEL_BATCH)
            if isinstance(cube_y, StripLabels):
                assert cut_y is not None
                y = cut_y[sel[part]]
            else:
                y = gather_windows(cube_y, t[part], r[part], c[part], size)
            spill.y.write(slice(first + lo, first + lo + len(y)), y)
            hist = _histograms(y)
            spill.label_counts += hist.sum(axis=0)
            spill.index.append(
                chip_index_frame(
                    name,
                    tile.grid,
                    tile.item_ids,
                    tile.times,
                    t[part],
                    r[part],
                    c[part],
                    size,
                    {
                        "nodata_fraction": sample.nodata_fraction[sel][part],
                        "labelled_fraction": sample.labelled_fraction[sel][part],
                        "cloud_fraction": sample.cloud_fraction[sel][part],
                    },
                    hist,
                    labels.classes,
                    labels.ignore_index,
                )
            )
    for sel, windows in iter_band_windows(tile, bands, sample.t, sample.r, sample.c, size):
        for code, name in enumerate(SPLITS):
            mine = sample.split[sel] == code
            if mine.any():
                spills[name].x.write(position[sel[mine]], windows[mine])


@transient_storage_errors("chipping")
def build_chips(
    cube_path: Path | str,
    out: Path | str,
    spec: ChipSpec,
    labels: LabelSpec,
    bands: Sequence[str],
    label_var: str = "scl",
    *,
    sampling: SamplingSpec | None = None,
    label_source: LabelSource | None = None,
    storage_options: Mapping[str, Any] | None = None,
    chunk_chips: int = CHUNK_CHIPS,
    shard_chips: int | None = None,
) -> ChipsInfo:
    """Cut chips from the train and test tiles of a cube and write ``chips.zarr`` + its index.

    Args:
        cube_path: cube store (ADR 0001), local path or ``s3://`` URI.
        out: chip store to write (replaced atomically), local path or URI.
        spec: chip size, stride, quality thresholds, train/test tiles, val fraction.
        labels: class schema (names, ignore index) and the SCL grouping.
        bands: cube variables stacked as the chip's channels, in order.
        label_var: cube variable holding class codes (used when ``label_source`` is None).
        sampling: sampler and split method (default: grid, split by tile).
        label_source: where labels come from (default: ``CubeClassMap(label_var)``).
        storage_options: fsspec options for remote cube / store.
        chunk_chips: chips per Zarr chunk.
        shard_chips: chips per Zarr shard (a multiple of ``chunk_chips``; None: no sharding,
            one object per chunk).

    Returns:
        Counts per split, rejections by reason, band statistics, class pixel counts.

    Raises:
        InputError: a tile named in the spec is missing, the labels miss a tile, or no
            train/test chip survives.
    """
    sampling = sampling or SamplingSpec.model_validate({})
    source: LabelSource = label_source or CubeClassMap(label_var)
    if chunk_chips < 1 or (shard_chips is not None and shard_chips % chunk_chips):
        raise InputError(
            f"shard_chips ({shard_chips}) must be a multiple of chunk_chips ({chunk_chips})."
        )
    cube = str(cube_path)
    available = list_cube_tiles(cube, storage_options)
    for tile in (*spec.train_tiles, *spec.test_tiles):
        if tile not in available:
            raise InputError(
                f"tile '{tile}' named in chips.train_tiles/test_tiles is not in the cube "
                f"(which has {available}); fix the chip spec or the search."
            )
    # test tiles first: where tiles overlap, the held-out tile keeps the shared ground
    order = [*sorted(set(spec.test_tiles)), *sorted(set(spec.train_tiles) - set(spec.test_tiles))]
    tiles = {t: open_cube_tile(cube, t, storage_options) for t in order}
    units = _band_units(tiles, bands)
    blocks = None
    if sampling.split == "block":
        shapes = {t: (tiles[t].grid.height, tiles[t].grid.width) for t in order}
        blocks = assign_blocks(
            shapes, sampling.block_size, spec.val_fraction, sampling.test_fraction, sampling.seed
        )
    for name in order:
        missing = [b for b in bands if b not in tiles[name].variables]
        if missing:
            raise InputError(
                f"cube tile '{name}' lacks variable(s) {missing}; re-run ingest with them."
            )
    # the chips' dtype: what one tile's windows come in, promoted across tiles
    x_dtype = np.result_type(*(band_dtype(tiles[t], bands) for t in order))
    rejected: dict[str, int] = {}
    # chips go to raw files in a folder made here, removed when done (eoforge.chips.spill)
    with spill_folder() as folder:
        spills = {
            s: SplitSpill(folder, s, (len(bands), spec.size, spec.size), x_dtype, spec.size)
            for s in SPLITS
        }
        for i, name in enumerate(order):
            cube_tile = tiles[name]
            covered = exclude_covered(cube_tile.grid, [tiles[o].grid for o in order[:i]])
            region = split_regions(
                name, cube_tile.grid.height, cube_tile.grid.width, spec, sampling, blocks, covered
            )
            # Bands are read a chunk row at a time; the (time, y, x) masks are whole as bits,
            # the labels by rows where the source can label rows (all of eoforge's), else whole.
            nodata = nodata_mask(cube_tile, bands)
            cube_y: NDArray[np.uint8] | StripLabels = strip_labels(
                cube_tile, source, labels, nodata
            ) or tile_labels(cube_tile, source, labels, nodata)
            cloud = None
            if sampling.max_cloud_fraction is not None:
                cloud = value_mask(cube_tile, sampling.cloud_variable, sampling.cloud_codes)
            sample = sample_tile(
                cube_y,
                nodata,
                region,
                spec,
                sampling,
                labels.ignore_index,
                len(labels.classes),
                temporal_mask(cube_tile.times, sampling, name),
                cloud,
                seed=(i,),
            )
            for reason, count in sample.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
            _cut_tile(cube_tile, sample, bands, cube_y, spec.size, labels, spills)
            del nodata, cube_y, cloud
            cube_tile.release()
        for name in ("train", "test"):
            if not spills[name].n:
                raise InputError(
                    f"no {name} chip survived the filters (rejected: {rejected}); relax "
                    "chips.max_nodata_fraction / chips.min_labelled_fraction or pick other "
                    "tiles/dates."
                )
        return _write_store(
            out, spills, spec, labels, bands, sampling, source, rejected, storage_options,
            chunk_chips, shard_chips, units,
        )  # fmt: skip


def _band_units(tiles: Mapping[str, CubeTile], bands: Sequence[str]) -> dict[str, Any]:
    """The cube's units of the model bands (``units`` of each tile group); tiles must agree.

    Raises:
        InputError: two tiles of the cube store a band in different units.
    """
    seen: dict[str, dict[str, Any]] = {}
    for name, tile in tiles.items():
        raw = tile.group.attrs.get("units")
        units: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
        seen[name] = {b: units.get(b) for b in bands if units.get(b) is not None}
    distinct = {json.dumps(u, sort_keys=True) for u in seen.values()}
    if len(distinct) > 1:
        raise InputError(
            f"the cube's tiles store the bands in different units ({seen}); re-run ingest with "
            "one cube.scale / cube.offset for all of them."
        )
    return next(iter(seen.values()), {})


def _write_store(
    out: Path | str,
    spills: dict[str, SplitSpill],
    spec: ChipSpec,
    labels: LabelSpec,
    bands: Sequence[str],
    sampling: SamplingSpec,
    source: LabelSource,
    rejected: dict[str, int],
    storage_options: Mapping[str, Any] | None,
    chunk_chips: int,
    shard_chips: int | None,
    units: Mapping[str, Any] | None = None,
) -> ChipsInfo:
    orders: dict[str, NDArray[np.int64]] = {}
    origins: dict[str, NDArray[np.int32]] = {}
    frames = []
    for code, name in enumerate(SPLITS):
        spill = spills[name]
        n = spill.n
        # stored in a seeded random order: any run of chunks is then a random sample
        order = (
            np.random.default_rng([sampling.seed, code]).permutation(n)
            if n
            else np.zeros(0, dtype=np.int64)
        )
        orders[name] = order
        origins[name] = (
            np.concatenate(spill.origin)[order] if n else np.zeros((0, 3), dtype=np.int32)
        )
        if n:
            frame = pd.concat(spill.index, ignore_index=True).iloc[order].reset_index(drop=True)
            frame.insert(1, "index", np.arange(n, dtype=np.int32))
            frames.append(frame)
    index = pd.concat(frames, ignore_index=True)
    overlaps = cross_split_overlaps(index)
    if overlaps.any():
        raise InternalError(
            f"{int((overlaps > 0).sum())} chip(s) share ground with chips of another split; the "
            "split guarantee of eoforge.chips.splits is broken."
        )
    mean, std = band_stats(spills["train"])
    payload = index_bytes(index)
    index_uri = chip_index_uri(out)
    counts: dict[str, int] = {}
    class_counts: dict[str, dict[str, int]] = {}
    with staged_store(out, storage_options) as staging:
        root = open_group(staging, "w", storage_options)
        root.attrs.update(
            bands=list(bands),
            classes=list(labels.classes),
            ignore_index=labels.ignore_index,
            chip_size=spec.size,
            band_mean=mean,
            band_std=std,
            chip_store_version=STORE_VERSION,
            chunk_chips=chunk_chips,
            shard_chips=shard_chips,
            index=index_uri.rsplit("/", 1)[-1],
            index_sha256=hashlib.sha256(payload).hexdigest(),
            sampling=sampling.model_dump(mode="json"),
            label_source=source.describe(),
        )
        if units:  # harmonised bands: reflectance = value * scale + offset (eoforge.cube.units)
            root.attrs["units"] = dict(units)
        for name in SPLITS:
            spill, order = spills[name], orders[name]
            group = root.create_group(name)
            rows = index[index["split"] == name]
            group.attrs.update(
                tiles=sorted(set(rows["tile"])), item_ids=[str(i) for i in rows["item_id"]]
            )
            for array, raw in (("x", spill.x), ("y", spill.y)):
                write_shuffled(group, array, raw, order, chunk_chips, shard_chips, _CODEC)
            origin = origins[name]
            group.create_array("origin", data=origin, chunks=(max(len(origin), 1), 3))
            counts[name] = spill.n
            class_counts[name] = {
                cls: int(spill.label_counts[i]) for i, cls in enumerate(labels.classes)
            }
        write_bytes_atomic(index_uri, payload, storage_options)
    return ChipsInfo(
        path=str(out) if is_remote(out) else Path(out),
        counts=counts,
        rejected=rejected,
        band_mean=mean,
        band_std=std,
        class_counts=class_counts,
        index_path=index_uri,
        label_source=source.describe(),
    )


def read_split(
    chips_path: Path | str, split: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[NDArray[np.uint16], NDArray[np.uint8]]:
    """Read one split's chips (x, y) into memory.

    Raises:
        InputError: unknown split, or no chip store at ``chips_path``.
    """
    if split not in SPLITS:
        raise InputError(f"split '{split}' is not one of {SPLITS}.")
    sub = open_group(chips_path, "r", storage_options)[split]
    assert isinstance(sub, zarr.Group)
    x, y = sub["x"], sub["y"]
    assert isinstance(x, zarr.Array) and isinstance(y, zarr.Array)
    return np.asarray(x[...]), np.asarray(y[...])
