"""Per-pixel spectral-temporal inputs read from a cube tile, block of rows by block of rows.

The encoder sees, per pixel, every date's four bands (reflectance) and a clear-sky flag from
SCL; cloudy, shadowed or missing observations are zeroed and flagged 0. The same blocks give
the baseline's per-pixel temporal median of the clear observations.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from eoforge.cube.tiles import CubeTile
from eoforge.errors import InputError

__all__ = [
    "BANDS",
    "CLEAR_SCL",
    "PixelBlock",
    "clear_median",
    "day_of_year",
    "iter_blocks",
    "read_block",
    "row_blocks",
]

#: The cube variables the encoder reads, in order.
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
#: SCL codes of a clear-sky observation of the surface: dark area, vegetation, not vegetated,
#: water, unclassified, snow/ice. Everything else (no data, defective, cloud shadow, clouds,
#: cirrus) is masked.
CLEAR_SCL: tuple[int, ...] = (2, 4, 5, 6, 7, 11)
_CLEAR = np.zeros(256, dtype=bool)
_CLEAR[list(CLEAR_SCL)] = True
#: Cube integers are reflectance x 10000 (cube.units).
_REFLECTANCE = 1e-4


@dataclass
class PixelBlock:
    """The inputs of the pixels in rows ``rows`` of a tile."""

    rows: slice
    """Rows of the tile."""
    reflectance: NDArray[np.float32]
    """``(time, band, h, w)`` surface reflectance, 0 where not clear."""
    clear: NDArray[np.bool_]
    """``(time, h, w)`` clear-sky observation flags."""
    scl: NDArray[np.uint8]
    """``(time, h, w)`` raw SCL codes."""
    doy: NDArray[np.float32]
    """``(time,)`` day of year of each slice (1..366), what the encoder knows of the date."""

    @property
    def valid(self) -> NDArray[np.bool_]:
        """``(h, w)`` pixels with at least one clear observation."""
        return np.asarray(self.clear.any(axis=0))


def row_blocks(height: int, rows: int) -> list[slice]:
    """Row slices of at most ``rows`` rows covering ``height``."""
    if rows < 1:
        raise InputError(f"block rows must be >= 1, got {rows}.")
    return [slice(r, min(r + rows, height)) for r in range(0, height, rows)]


def _check_variables(tile: CubeTile, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in tile.variables]
    if missing:
        raise InputError(
            f"cube '{tile.cube}' tile '{tile.grid.tile}' lacks variable '{missing[0]}' (it has "
            f"{tile.variables}); ingest {list(BANDS)} and 'scl' to compute embeddings."
        )


def read_block(tile: CubeTile, rows: slice, bands: Sequence[str] = BANDS) -> PixelBlock:
    """Read rows ``rows`` of every date of ``tile`` (only those chunks are decoded)."""
    _check_variables(tile, ["scl", *bands])
    top, bottom = rows.start or 0, rows.stop
    scl = np.asarray(tile.read_rows("scl", top, bottom), dtype=np.uint8)
    clear = _CLEAR[scl]
    values = np.stack([tile.read_rows(b, top, bottom) for b in bands], axis=1)
    clear &= (values > 0).all(axis=1)
    refl = values.astype(np.float32) * np.float32(_REFLECTANCE)
    refl *= clear[:, None]
    return PixelBlock(rows, refl, clear, scl, day_of_year(tile))


def day_of_year(tile: CubeTile) -> NDArray[np.float32]:
    """``(time,)`` day of year of each slice of ``tile``.

    Raises:
        InputError: the tile's store has no decodable acquisition times.
    """
    times = np.asarray(tile.times, dtype="datetime64[D]")
    if np.isnat(times).any():
        raise InputError(
            f"cube '{tile.cube}' tile '{tile.grid.tile}' has no acquisition time for some slices; "
            "the encoder needs each date's day of year: re-run ingest."
        )
    years = times.astype("datetime64[Y]")
    return np.asarray((times - years).astype(np.int64) + 1, np.float32)


def iter_blocks(tile: CubeTile, rows: int) -> Iterator[PixelBlock]:
    """Every block of ``rows`` rows of ``tile``, top to bottom."""
    for sl in row_blocks(tile.grid.height, rows):
        yield read_block(tile, sl)


def clear_median(block: PixelBlock) -> NDArray[np.float32]:
    """``(h, w, band)`` temporal median of the clear observations (NaN where none)."""
    refl = np.where(block.clear[:, None], block.reflectance, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        med = np.nanmedian(refl, axis=0)
    return np.moveaxis(med, 0, -1).astype(np.float32)
