"""Sliding-window geometry and blending for :func:`eoforge.inference.predict.predict_raster`: window starts
and taper weights per axis, the rolling input strip, and the softmax/argmax of the blend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError
from eoforge.inference.host_threads import over_row_bands
from eoforge.inference.scene_io import SceneReader


def _axis_plan(
    size: int, window: int, overlap: int, static: int | None
) -> tuple[int, int, list[int]]:
    """Window edge, padded extent and window starts along one axis.

    A scene at least one window long is never padded. Along a longer one, a model with dynamic
    axes gets as many windows as ``window`` and ``overlap`` need, each as short as that count
    allows (a multiple of 8, at most ``window``), spread evenly with at least ``overlap``
    between neighbours: a 10980 px tile takes 24 windows of 504 px at 512 / 48 instead of 24 of
    512 whose last overlaps its neighbour by 252 px (3 % fewer pixels through the model); a
    915 px scene 2 of 488 px (9 % fewer). A static model's windows keep their size and the
    last one shifts inward. A shorter scene is padded (by reflection) to a multiple of 8, or to
    a static model's window.
    """
    if static is None and size > window:
        count = -(-(size - overlap) // (window - overlap))
        edge = min(window, -(-(size + (count - 1) * overlap) // (8 * count)) * 8)
        last = size - edge
        return edge, size, [k * last // (count - 1) for k in range(count)]
    if static is not None:
        edge = static
    elif size >= window:
        edge = window
    else:
        edge = -(-size // 8) * 8
    padded = max(size, edge)
    last = padded - edge
    if last == 0:
        return edge, padded, [0]
    starts = list(range(0, last + 1, edge - overlap))
    if starts[-1] != last:
        starts.append(last)
    return edge, padded, starts


def _axis_weights(starts: Sequence[int], edge: int) -> list[npt.NDArray[np.float32]]:
    """Blend weights of each window along one axis.

    Linear ramps over the actual overlap with each neighbour: complementary ramps of two windows
    sum to 1, so the blend has no seam; a side at the scene border keeps full weight; every weight
    is > 0, so a pixel seen by one window only still gets its prediction.
    """
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(edge, np.float32)
        if i > 0:
            n = starts[i - 1] + edge - start
            if n > 0:
                w[:n] = np.minimum(w[:n], np.arange(1, n + 1, dtype=np.float32) / (n + 1))
        if i < len(starts) - 1:
            n = start + edge - starts[i + 1]
            if n > 0:
                w[edge - n :] = np.minimum(
                    w[edge - n :], np.arange(n, 0, -1, dtype=np.float32) / (n + 1)
                )
        weights.append(w)
    return weights


#: Receives the blended class scores ``(K, n, W)`` and validity ``(n, W)`` of finished rows.
ScoresSink = Callable[[int, npt.NDArray[np.float32], npt.NDArray[np.bool_]], None]

#: Receives the input rows ``(C, n, W)`` (as read) and the class rows ``(n, W)`` of finished rows,
#: in order (e.g. :meth:`eoforge.inference.drift.ProfileAccumulator.add`).
RowsSink = Callable[[npt.NDArray[Any], npt.NDArray[np.uint8]], None]


class RawRows:
    """The input rows read but not finished yet, for a :data:`RowsSink` (copies: a reader's
    rows may be views of a decoded chunk row it is about to drop). Holds at most the rows
    between the read position and the last finished row, about two window heights."""

    def __init__(self) -> None:
        self.parts: list[npt.NDArray[Any]] = []

    def push(self, rows: npt.NDArray[Any]) -> None:
        self.parts.append(np.array(rows, copy=True))

    def take(self, n: int) -> npt.NDArray[Any]:
        """The next ``n`` rows, removed."""
        out: list[npt.NDArray[Any]] = []
        while n > 0:
            head = self.parts[0]
            if head.shape[1] <= n:
                out.append(self.parts.pop(0))
                n -= head.shape[1]
            else:
                out.append(head[:, :n])
                self.parts[0] = head[:, n:]
                n = 0
        return out[0] if len(out) == 1 else np.concatenate(out, axis=1)


#: Where one window's blend weight is below 1 along one axis: (slice, weights there) pairs.
Ramps = list[tuple[slice, npt.NDArray[np.float32]]]


def _axis_ramps(weights: Sequence[npt.NDArray[np.float32]]) -> list[Ramps]:
    """The tapered ends of each window's weights (:func:`_axis_weights`); 1 elsewhere.

    Weighting only these ends (a window's overlap with its neighbours) instead of the whole
    window saves a full pass over every window's probabilities.
    """
    out = []
    for w in weights:
        ramps: Ramps = []
        below = np.flatnonzero(w < 1)
        if below.size:
            head = below[below < len(w) // 2]
            tail = below[below >= len(w) // 2]
            for part in (head, tail):
                if part.size:
                    cut = slice(int(part[0]), int(part[-1]) + 1)
                    ramps.append((cut, w[cut]))
        out.append(ramps)
    return out


def _weighted_softmax_(
    logits: npt.NDArray[np.float32], ramps: Sequence[tuple[Ramps, Ramps]]
) -> npt.NDArray[np.float32]:
    """Softmax over axis 1 times each window's separable blend weights, in place.

    ``ramps[k]`` holds window ``k``'s (rows, columns) ramps (:func:`_axis_ramps`). The weights
    are folded into the per-pixel reciprocal of the softmax denominator, an array ``K`` times
    smaller than the probabilities, so weighting costs no pass over them.

    Raises:
        InputError: the logits hold NaN or +inf (the model is broken).
    """
    n, _, height, width = logits.shape
    scale = np.empty((n, 1, height, width), np.float32)
    broken: list[slice] = []

    def softmax_rows(rows: slice) -> None:  # bands of rows on the host threads
        part = logits[:, :, rows]
        top = part.max(axis=1, keepdims=True)
        if not np.isfinite(top).all():  # NaN and +inf reach the max; -inf alone is a 0
            broken.append(rows)
            return
        np.subtract(part, top, out=part)
        np.exp(part, out=part)
        inv = scale[:, :, rows]
        np.sum(part, axis=1, keepdims=True, out=inv)
        np.reciprocal(inv, out=inv)

    over_row_bands(softmax_rows, height)
    if broken:
        raise InputError("the ONNX model returned non-finite logits; retrain or re-export it.")
    for k, (rows_ramps, cols_ramps) in enumerate(ramps):
        plane = scale[k, 0]
        for cut, w in rows_ramps:
            plane[cut] *= w[:, None]
        for cut, w in cols_ramps:
            plane[:, cut] *= w[None, :]

    def weigh_rows(rows: slice) -> None:
        np.multiply(logits[:, :, rows], scale[:, :, rows], out=logits[:, :, rows])

    over_row_bands(weigh_rows, height)
    return logits


@dataclass(frozen=True)
class _BlendPlan:
    """Each window's blend weights along both axes, whole and as ramps (:func:`_axis_ramps`)."""

    weights_y: list[npt.NDArray[np.float32]]
    weights_x: list[npt.NDArray[np.float32]]
    ramps_y: list[Ramps]
    ramps_x: list[Ramps]

    @classmethod
    def of(
        cls, weights_y: list[npt.NDArray[np.float32]], weights_x: list[npt.NDArray[np.float32]]
    ) -> _BlendPlan:
        return cls(weights_y, weights_x, _axis_ramps(weights_y), _axis_ramps(weights_x))

    def ramps(self, windows: Sequence[tuple[int, int]]) -> list[tuple[Ramps, Ramps]]:
        """The (rows, columns) ramps of windows given as (row, column) indices."""
        return [(self.ramps_y[i], self.ramps_x[j]) for i, j in windows]


class _BlendBuffer:
    """The blend accumulator: class scores ``(K, rows, W)`` of the scene rows from ``done`` on.

    One preallocated buffer, reused: the window moves down over finished rows; the live rows
    are moved to the top (and the rows behind them zeroed) only when a window would run past
    the end, and the buffer grows only when even that is not enough, instead of a new array
    per window row.
    """

    def __init__(self, classes: int, width: int, capacity: int) -> None:
        self.buf = np.zeros((classes, capacity, width), np.float32)
        self.start = 0  # buffer row of the first unfinished scene row
        self.end = 0  # buffer rows [start, end) have been written to

    @property
    def rows(self) -> int:
        """Rows held (written and not yet released)."""
        return self.end - self.start

    def region(self, top: int, bottom: int) -> npt.NDArray[np.float32]:
        """Rows ``[top, bottom)`` counted from the first unfinished row (a view to add into)."""
        if self.start + bottom > self.buf.shape[1]:
            live = self.end - self.start
            if bottom > self.buf.shape[1]:
                grown = np.zeros(
                    (self.buf.shape[0], max(bottom, 2 * self.buf.shape[1]), self.buf.shape[2]),
                    np.float32,
                )
                grown[:, :live] = self.buf[:, self.start : self.end]
                self.buf = grown
            else:
                self.buf[:, :live] = self.buf[:, self.start : self.end]
                self.buf[:, live : self.end] = 0
            self.start, self.end = 0, live
        self.end = max(self.end, self.start + bottom)
        return self.buf[:, self.start + top : self.start + bottom]

    def release(self, rows: int) -> None:
        """The first ``rows`` unfinished rows are done: move on. They are not touched again
        until a compaction moves the live rows over them and zeroes what lies behind."""
        self.start += rows
        self.end = max(self.end, self.start)


def _nodata_as(dtype: np.dtype[Any], nodata: float) -> Any:
    """``nodata`` as a scalar of the bands' dtype, or None if no value of it can equal ``nodata``.

    Comparing uint16 bands with a Python float would convert every pixel to float64 first (6x
    slower here, far more on some hosts); an exact scalar of the same dtype compares natively.
    """
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            return None
        return dtype.type(int(nodata))
    value = dtype.type(nodata)
    return value if float(value) == nodata else None


def _valid_pixels(bands: npt.NDArray[Any], nodata: float) -> npt.NDArray[np.bool_]:
    """Pixels of ``bands`` ``(C, ...)`` where no band equals ``nodata`` (compared in the bands'
    dtype, :func:`_nodata_as`; band by band: no ``(C, ...)`` boolean temporary)."""
    valid = np.ones(bands.shape[1:], bool)
    value = _nodata_as(bands.dtype, nodata)
    if value is None:  # no value of this dtype equals it: every pixel is valid
        return valid
    unequal = np.empty(bands.shape[1:], bool)
    for band in bands:
        np.not_equal(band, value, out=unequal)
        valid &= unequal
    return valid


class _RowSource:
    """The input rows a window row needs, read once each, padded like the whole scene would be.

    Keeps a rolling buffer of at most one window of rows and their validity (computed once per
    row, when it is read); also the per-pixel validity of the rows read but not yet finalised,
    so nodata can be masked when rows are written.
    """

    def __init__(
        self,
        reader: SceneReader,
        nodata: float,
        edge_y: int,
        padded_w: int,
        raw: RawRows | None = None,
    ) -> None:
        self.reader = reader
        self.raw = raw  # also keeps the rows read until they are finished
        self.channels, self.height, self.width = reader.shape
        self.nodata = nodata
        self.edge_y = edge_y
        self.padded_w = padded_w
        self.buf: npt.NDArray[Any] | None = None  # rows [buf_top, buf_top + len) of the scene
        self.buf_valid = np.zeros((0, padded_w), bool)  # their validity, padded like them
        self.buf_top = 0
        self.valid_rows = np.zeros((0, self.width), bool)  # rows [valid_top, read_bottom)
        self.valid_top = 0
        self.read_bottom = 0

    def _read(self, top: int, bottom: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        rows = self.reader.read_rows(top, bottom)
        expected = (self.channels, bottom - top, self.width)
        if rows.shape != expected:
            raise InputError(
                f"the scene reader returned rows of shape {rows.shape} for rows {top}..{bottom}; "
                f"expected {expected}."
            )
        if not (np.issubdtype(rows.dtype, np.integer) or np.issubdtype(rows.dtype, np.floating)):
            raise InputError(f"bands must be numeric (uint16 DN), got {rows.dtype}.")
        valid = _valid_pixels(rows, self.nodata)
        if self.raw is not None:
            self.raw.push(rows)
        self.valid_rows = np.concatenate([self.valid_rows, valid])
        self.read_bottom = bottom
        if self.padded_w > self.width:
            extra = self.padded_w - self.width
            rows = np.pad(rows, ((0, 0), (0, 0), (0, extra)), mode="reflect")
            valid = np.pad(valid, ((0, 0), (0, extra)), mode="reflect")
        return rows, valid

    def strip(self, top: int) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """Input rows ``[top, top + edge_y)`` (C, edge_y, padded_w) and their validity."""
        if self.height < self.edge_y:  # one window row over a short scene: pad by reflection
            if self.buf is None:
                rows, _ = self._read(0, self.height)
                pad = ((0, 0), (0, self.edge_y - self.height), (0, 0))
                self.buf = np.pad(rows, pad, mode="reflect")
                self.buf_valid = _valid_pixels(self.buf, self.nodata)
            return self.buf, self.buf_valid
        bottom = top + self.edge_y
        skip = top - self.buf_top
        keep = self.buf[:, skip:] if self.buf is not None else None
        keep_valid = self.buf_valid[skip:]
        start = max(top, self.read_bottom)
        if start >= bottom:
            assert keep is not None
            strip, valid = keep, keep_valid
        else:
            fresh, fresh_valid = self._read(start, bottom)
            if keep is None or keep.shape[1] == 0:
                strip, valid = fresh, fresh_valid
            else:
                strip = np.concatenate([keep, fresh], axis=1)
                valid = np.concatenate([keep_valid, fresh_valid])
        self.buf, self.buf_valid, self.buf_top = strip, valid, top
        return strip, valid

    def take_valid(self, rows: int) -> npt.NDArray[np.bool_]:
        """Validity of the next ``rows`` unfinished rows (consumed)."""
        out = self.valid_rows[:rows]
        self.valid_rows = self.valid_rows[rows:]
        self.valid_top += rows
        return out


def _argmax_classes(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """``argmax(axis=0)`` (first maximum wins) for few classes, ~2x faster on strided strips."""
    index = np.zeros(probs.shape[1:], np.uint8)

    def argmax_rows(rows: slice) -> None:  # bands of rows on the host threads
        best = probs[0, rows].copy()
        out = index[rows]
        for k in range(1, probs.shape[0]):
            out[probs[k, rows] > best] = k
            np.maximum(best, probs[k, rows], out=best)

    over_row_bands(argmax_rows, len(index))
    return index
