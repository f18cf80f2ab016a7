"""Splits: which split (train, val, test) each pixel and time slice of a tile may feed.

Every pixel of a tile belongs to at most one split region, by tile (test tiles whole, the
eastmost ``val_fraction`` of train tiles for validation) or by block (square blocks of all
tiles shuffled into splits in exact proportions). A chip is only kept when its whole window
lies in one region, so chips of different splits never share a pixel; ground covered by
several (overlapping) tiles is sampled from the first tile in sampling order only (test tiles
first), so no ground is shared across tiles either. ``test_from`` adds a temporal split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from eoforge.config import ChipSpec
from eoforge.errors import InputError

if TYPE_CHECKING:
    from eoforge.config import SamplingSpec

__all__ = [
    "COVERED",
    "NO_SPLIT",
    "SPLITS",
    "assign_blocks",
    "split_regions",
    "temporal_mask",
]

SPLITS = ("train", "val", "test")
#: Region code of pixels in no split (e.g. a tile not named in the chip spec).
NO_SPLIT = 255
#: Region code of pixels whose ground an earlier tile already covers.
COVERED = 254


def assign_blocks(
    shapes: Mapping[str, tuple[int, int]],
    block_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, NDArray[np.uint8]]:
    """Assign every ``block_size`` block of every tile to a split, in exact proportions.

    Blocks are shuffled with ``seed``; the first ``round(n * test_fraction)`` (at least one
    when the fraction is positive) go to test, the next ``round(n * val_fraction)`` to val.

    Args:
        shapes: tile -> (height, width).
        block_size: block edge in pixels.
        val_fraction: share of blocks for validation.
        test_fraction: share of blocks for test.
        seed: shuffling seed.

    Returns:
        tile -> ``(block rows, block cols)`` array of split codes (0 train, 1 val, 2 test).

    Raises:
        InputError: too few blocks to give every requested split one.
    """
    keys = [
        (tile, br, bc)
        for tile in sorted(shapes)
        for br in range(math.ceil(shapes[tile][0] / block_size))
        for bc in range(math.ceil(shapes[tile][1] / block_size))
    ]
    n = len(keys)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise InputError(
            f"block split: {n} block(s) of {block_size} px cannot hold {n_test} test + {n_val} val "
            "block(s) and leave one for training; lower sampling.block_size or the fractions."
        )
    codes = np.zeros(n, dtype=np.uint8)
    order = np.random.default_rng(seed).permutation(n)
    codes[order[:n_test]] = 2
    codes[order[n_test : n_test + n_val]] = 1
    out = {
        tile: np.zeros((math.ceil(h / block_size), math.ceil(w / block_size)), dtype=np.uint8)
        for tile, (h, w) in shapes.items()
    }
    for (tile, br, bc), code in zip(keys, codes, strict=True):
        out[tile][br, bc] = code
    return out


def split_regions(
    tile: str,
    height: int,
    width: int,
    chip: ChipSpec,
    sampling: SamplingSpec,
    blocks: Mapping[str, NDArray[np.uint8]] | None = None,
    covered: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """The split region of every pixel of a tile: 0 train, 1 val, 2 test, or no split.

    Args:
        tile: tile id.
        height: tile rows.
        width: tile columns.
        chip: tiles per split and ``val_fraction``.
        sampling: the split method.
        blocks: block assignment of :func:`assign_blocks` (block split only).
        covered: pixels already covered by an earlier tile (become :data:`COVERED`).

    Returns:
        ``(height, width)`` uint8 region codes.
    """
    region = np.full((height, width), NO_SPLIT, dtype=np.uint8)
    if sampling.split == "block":
        if blocks is None or tile not in blocks:
            if tile in (*chip.train_tiles, *chip.test_tiles):
                raise InputError(f"block split: no block assignment for tile '{tile}'.")
        else:
            b = sampling.block_size
            codes = blocks[tile]
            region[:] = codes[np.arange(height)[:, None] // b, np.arange(width)[None, :] // b]
    elif tile in chip.test_tiles:
        region[:] = 2
    elif tile in chip.train_tiles:
        boundary = round(width * (1 - chip.val_fraction))
        region[:, :boundary] = 0
        region[:, boundary:] = 1
    if covered is not None:
        region[covered & (region != NO_SPLIT)] = COVERED
    return region


def temporal_mask(
    times: NDArray[np.datetime64], sampling: SamplingSpec, tile: str
) -> NDArray[np.bool_]:
    """Which time slices each split may use: ``(3, time)`` bool (all True without test_from).

    Raises:
        InputError: ``test_from`` is set but the cube has no acquisition times.
    """
    allowed = np.ones((3, len(times)), dtype=bool)
    if sampling.test_from is None:
        return allowed
    if np.isnat(times).any():
        raise InputError(
            f"sampling.test_from is set but tile '{tile}' has no acquisition times; re-run "
            "ingest (the cube needs its time coordinate) or drop test_from."
        )
    later = times >= np.datetime64(sampling.test_from, "ns")
    allowed[0] = allowed[1] = ~later
    allowed[2] = later
    return allowed
