"""Chips: cut the cube into fixed-size patches with labels, filtered and split by tile and block.

Train tiles are split spatially: the eastmost ``val_fraction`` of each train tile is the
validation block, and no train chip reaches into it. Test tiles are held out whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray

from eoforge.config import ChipSpec, LabelSpec
from eoforge.cube import list_tiles, open_tile
from eoforge.errors import InputError
from eoforge.labels import scl_to_classes
from eoforge.storage import staged_dir

__all__ = ["ChipsInfo", "build_chips", "grid_origins", "read_split"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChipsInfo:
    """What :func:`build_chips` wrote."""

    path: Path
    counts: dict[str, int]
    rejected: dict[str, int]
    band_mean: list[float]
    band_std: list[float]
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)


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


@dataclass
class _Split:
    x: list[NDArray[np.uint16]] = field(default_factory=list)
    y: list[NDArray[np.uint8]] = field(default_factory=list)
    origin: list[tuple[int, int, int]] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    tiles: list[str] = field(default_factory=list)


def _split_of(tile: str, col: int, size: int, width: int, spec: ChipSpec) -> str | None:
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


def build_chips(
    cube_path: Path,
    out: Path,
    spec: ChipSpec,
    labels: LabelSpec,
    bands: Sequence[str],
    label_var: str = "scl",
) -> ChipsInfo:
    """Cut chips from every time slice of the train and test tiles and write ``chips.zarr``.

    Raises:
        InputError: a tile named in the spec is missing, or no train/test chip survives.
    """
    available = list_tiles(cube_path)
    for tile in (*spec.train_tiles, *spec.test_tiles):
        if tile not in available:
            raise InputError(
                f"tile '{tile}' named in chips.train_tiles/test_tiles is not in the cube "
                f"(which has {available}); fix the chip spec or the search."
            )
    splits = {s: _Split() for s in SPLITS}
    rejected = {"nodata": 0, "unlabelled": 0, "boundary": 0}
    for tile in sorted(set(spec.train_tiles) | set(spec.test_tiles)):
        ds = open_tile(cube_path, tile)
        missing = [b for b in (*bands, label_var) if b not in ds.data_vars]
        if missing:
            raise InputError(
                f"cube tile '{tile}' lacks variable(s) {missing}; re-run ingest with them."
            )
        cube = np.stack([ds[b].values for b in bands], axis=1)  # (t, c, h, w)
        lab = scl_to_classes(ds[label_var].values, labels)  # (t, h, w)
        nodata = (cube == 0).any(axis=1)
        ids = [str(i) for i in ds["item_id"].values]
        _, _, h, w = cube.shape
        for r, c in grid_origins(h, w, spec.size, spec.stride):
            split = _split_of(tile, c, spec.size, w, spec)
            if split is None:
                rejected["boundary"] += cube.shape[0]
                continue
            win = (slice(r, r + spec.size), slice(c, c + spec.size))
            for t in range(cube.shape[0]):
                if nodata[t][win].mean() > spec.max_nodata_fraction:
                    rejected["nodata"] += 1
                    continue
                y = lab[t][win]
                if (y != labels.ignore_index).mean() < spec.min_labelled_fraction:
                    rejected["unlabelled"] += 1
                    continue
                s = splits[split]
                s.x.append(cube[t][(slice(None), *win)])
                s.y.append(y)
                s.origin.append((t, r, c))
                s.item_ids.append(ids[t])
                s.tiles.append(tile)
    for name in ("train", "test"):
        if not splits[name].x:
            raise InputError(
                f"no {name} chip survived the filters (rejected: {rejected}); relax "
                "chips.max_nodata_fraction / chips.min_labelled_fraction or pick other tiles/dates."
            )
    train_x = np.stack(splits["train"].x)
    valid = (train_x != 0).all(axis=1)  # (n, h, w)
    pix = np.moveaxis(train_x, 1, 0)[:, valid].astype(np.float64)
    mean = pix.mean(axis=1).tolist()
    std = np.maximum(pix.std(axis=1), 1.0).tolist()

    counts: dict[str, int] = {}
    class_counts: dict[str, dict[str, int]] = {}
    with staged_dir(out) as staging:
        root = zarr.open_group(str(staging), mode="w", zarr_format=3)
        root.attrs.update(
            bands=list(bands),
            classes=list(labels.classes),
            ignore_index=labels.ignore_index,
            chip_size=spec.size,
            band_mean=mean,
            band_std=std,
        )
        for name, s in splits.items():
            n = len(s.x)
            counts[name] = n
            g = root.create_group(name)
            g.attrs.update(tiles=sorted(set(s.tiles)), item_ids=s.item_ids)
            c = len(bands)
            xs = np.stack(s.x) if n else np.zeros((0, c, spec.size, spec.size), np.uint16)
            ys = np.stack(s.y) if n else np.zeros((0, spec.size, spec.size), np.uint8)
            og = np.asarray(s.origin, dtype=np.int32).reshape(n, 3)
            g.create_array("x", data=xs, chunks=(1, c, spec.size, spec.size))
            g.create_array("y", data=ys, chunks=(1, spec.size, spec.size))
            g.create_array("origin", data=og, chunks=(max(n, 1), 3))
            hist = np.bincount(ys.ravel(), minlength=256)
            class_counts[name] = {cls: int(hist[i]) for i, cls in enumerate(labels.classes)}
    return ChipsInfo(
        path=Path(out),
        counts=counts,
        rejected=rejected,
        band_mean=mean,
        band_std=std,
        class_counts=class_counts,
    )


def read_split(chips_path: Path, split: str) -> tuple[NDArray[np.uint16], NDArray[np.uint8]]:
    """Read one split's chips (x, y) into memory."""
    if split not in SPLITS:
        raise InputError(f"split '{split}' is not one of {SPLITS}.")
    g = zarr.open_group(str(chips_path), mode="r")
    xa, ya = g[f"{split}/x"], g[f"{split}/y"]
    assert isinstance(xa, zarr.Array) and isinstance(ya, zarr.Array)
    return np.asarray(xa[...]), np.asarray(ya[...])
