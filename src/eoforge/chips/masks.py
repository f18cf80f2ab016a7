"""Boolean ``(time, y, x)`` masks of a whole tile held as bits: an eighth of a byte per pixel.

Chipping needs a tile's input-nodata and cloud masks whole (the sampler counts them under any
candidate window), but never more than a band of rows of them at once. :class:`PackedMask`
keeps them packed along x (``numpy.packbits``): 15 MB per date of a 10980 px tile instead of
120 MB as ``bool``; :meth:`PackedMask.rows` unpacks a band of rows when it is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["PackedMask", "RowSource"]


class RowSource(Protocol):
    """A ``(time, height, width)`` array produced a band of rows at a time, never whole."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def size(self) -> int: ...

    def rows(self, top: int, bottom: int) -> NDArray[Any]:
        """Rows ``[top, bottom)``: ``(time, bottom - top, width)``."""
        ...


@dataclass(frozen=True)
class PackedMask:
    """A boolean ``(time, height, width)`` mask packed into bits along x."""

    bits: NDArray[np.uint8]
    """``(time, height, ceil(width / 8))`` packed rows (big-endian bit order)."""
    width: int
    """Pixels per row."""

    @classmethod
    def from_strips(
        cls,
        shape: tuple[int, int, int],
        strips: Iterable[tuple[int, int, NDArray[np.bool_]]],
    ) -> PackedMask:
        """Pack ``(top, bottom, rows)`` strips (``rows``: ``(time, bottom - top, width)``
        bool) of a mask of ``shape``; rows no strip covers stay False."""
        n_t, h, w = shape
        bits = np.zeros((n_t, h, (w + 7) // 8), dtype=np.uint8)
        for top, bottom, rows in strips:
            if rows.shape != (n_t, bottom - top, w):
                raise ValueError(f"strip rows {rows.shape} do not fit {shape} at [{top}, {bottom})")
            bits[:, top:bottom] = np.packbits(rows, axis=-1)
        return cls(bits, w)

    @classmethod
    def of(cls, mask: NDArray[np.bool_]) -> PackedMask:
        """Pack a whole ``(time, height, width)`` mask."""
        m = np.asarray(mask, dtype=bool)
        return cls(np.packbits(m, axis=-1), m.shape[-1])

    @property
    def shape(self) -> tuple[int, int, int]:
        n_t, h, _ = self.bits.shape
        return n_t, h, self.width

    @property
    def size(self) -> int:
        """Pixels of the mask (time x height x width), as ``ndarray.size``."""
        n_t, h, w = self.shape
        return n_t * h * w

    def rows(self, top: int, bottom: int) -> NDArray[np.bool_]:
        """Rows ``[top, bottom)`` unpacked: ``(time, bottom - top, width)`` bool."""
        out = np.unpackbits(self.bits[:, top:bottom], axis=-1, count=self.width)
        return out.view(np.bool_)

    def to_array(self) -> NDArray[np.bool_]:
        """The whole mask as ``bool`` (tests and small tiles only)."""
        return self.rows(0, self.shape[1])
