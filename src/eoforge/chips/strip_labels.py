"""A tile's labels computed a chunk row at a time, never held whole.

Where the label source can label rows (``label_rows``: class codes of a cube variable, Sen2Cor's
SCL by default; polygons; points; a class raster), chipping does not need the tile's
``(time, y, x)`` label raster at all: the sampler counts labelled and per-class pixels under
its candidate windows from summed-area tables of row bands
(:class:`eoforge.chips.sampling.WindowCounts`), and the label chips are cut strip by strip like
the bands. Each pass relabels the rows it reads (a lookup of the codes read from the cube), so
memory is bounded by the strip, whatever the tile's size and number of dates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.chips.masks import PackedMask
from eoforge.chips.strips import check_label_rows, iter_row_windows, no_labels
from eoforge.config import LabelSpec
from eoforge.cube.tiles import CubeTile
from eoforge.errors import InternalError
from eoforge.labels.classes import LabelSource, TileLabelContext

__all__ = ["StripLabels", "strip_labels"]


class StripLabels:
    """Class indices ``(time, y, x)`` of a tile, produced by rows: ``ignore_index`` where the
    source has no label or the input has no data.

    Has ``shape``, ``size`` and :meth:`rows`, as :class:`~eoforge.chips.masks.PackedMask` does, so
    :class:`~eoforge.chips.sampling.WindowCounts` counts it band by band.
    """

    def __init__(self, tile: CubeTile, source: Any, labels: LabelSpec, nodata: PackedMask) -> None:
        self.tile = tile
        self.source = source
        self.labels = labels
        self.nodata = nodata
        self.ctx = TileLabelContext(
            tile.grid,
            tile.item_ids,
            labels,
            tile.variable,
            rows=tile.read_rows,
            strips=tile.strips,
        )
        self.shape = (len(tile.item_ids), tile.grid.height, tile.grid.width)
        self.size = int(np.prod(self.shape))

    def rows(self, top: int, bottom: int) -> NDArray[np.uint8]:
        """Labels of rows ``[top, bottom)``: ``(time, bottom - top, width)`` uint8.

        Raises:
            InternalError: the source returned the wrong shape or dtype.
        """
        y = np.asarray(self.source.label_rows(self.ctx, top, bottom))
        expected = (self.shape[0], bottom - top, self.shape[2])
        if y.shape != expected or y.dtype != np.uint8:
            raise InternalError(
                f"label source {self.source.describe()} returned {y.dtype}{y.shape} for rows "
                f"[{top}, {bottom}) of tile '{self.tile.grid.tile}', expected uint8{expected}."
            )
        if not (y.flags.writeable and y.flags.owndata):
            y = y.copy()
        y[self.nodata.rows(top, bottom)] = self.labels.ignore_index
        return y

    def check(self) -> None:
        """One pass over the tile: class indices in range, and at least one labelled pixel.

        Raises:
            InputError: the source labels no pixel of the tile that has input data.
            InternalError: the source produced class indices out of range.
        """
        labelled = False
        for top, bottom in self.tile.strips():
            labelled = (
                check_label_rows(self.rows(top, bottom), self.labels, self.source) or labelled
            )
        if not labelled:
            raise no_labels(self.source, self.tile.grid.tile)

    def windows(
        self, t: NDArray[np.int64], r: NDArray[np.int64], c: NDArray[np.int64], size: int
    ) -> NDArray[np.uint8]:
        """The ``(n, size, size)`` label windows at (t, r, c), in that order, cut strip by strip
        (:func:`~eoforge.chips.strips.iter_row_windows`)."""
        out = np.empty((len(t), size, size), dtype=np.uint8)
        for part, windows in iter_row_windows(
            self.tile.strips(), [self.rows], t, r, c, size, np.uint8
        ):
            out[part] = windows[:, 0]
        return out


def strip_labels(
    tile: CubeTile, source: LabelSource, labels: LabelSpec, nodata: PackedMask
) -> StripLabels | None:
    """The tile's labels by rows, checked (:meth:`StripLabels.check`), where ``source`` can
    label rows; None where it labels whole tiles only.

    Raises:
        InputError: the source labels no pixel of the tile that has input data.
        InternalError: the source produced wrong rows or class indices out of range.
    """
    if not callable(getattr(source, "label_rows", None)):
        return None
    out = StripLabels(tile, source, labels, nodata)
    out.check()
    return out
