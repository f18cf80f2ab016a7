"""Where chips are cut: the grid / random / class-balanced samplers and their quality filters.

A candidate window is kept only when it lies wholly inside one split region
(:mod:`eoforge.chips.splits`), its slice may feed that split, and it passes the nodata, label and
cloud filters. Window statistics are vectorised over candidates: counted directly for a few
windows, from summed-area tables (O(1) per window) for many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from eoforge.chips.masks import PackedMask, RowSource
from eoforge.chips.splits import COVERED, NO_SPLIT
from eoforge.config import ChipSpec, SamplingSpec
from eoforge.errors import InputError

__all__ = [
    "REJECT_REASONS",
    "TileSample",
    "WindowCounts",
    "sample_tile",
]

#: Why candidate windows were rejected, in the order the checks apply.
REJECT_REASONS = ("boundary", "overlap", "temporal", "nodata", "unlabelled", "cloud")


# --------------------------------------------------------------------------- window statistics


def _integral(mask: NDArray[Any]) -> NDArray[np.int32]:
    """Summed-area table with a zero first row/column: ``(..., h + 1, w + 1)``."""
    out = np.zeros((*mask.shape[:-2], mask.shape[-2] + 1, mask.shape[-1] + 1), dtype=np.int32)
    np.cumsum(mask, axis=-2, dtype=np.int32, out=out[..., 1:, 1:])
    np.cumsum(out[..., 1:, 1:], axis=-1, out=out[..., 1:, 1:])
    return out


@dataclass
class WindowCounts:
    """Pixel counts of square windows of boolean masks.

    Few windows are counted directly on the mask; once the windows asked for would touch more
    pixels than the mask holds, a summed-area table is built and each window costs O(1). A
    table is kept only up to :data:`TABLE_BYTES`; for a larger mask (a whole 10980 px tile:
    480 MB per date) each call counts from tables of row bands of that size instead, so memory
    stays bounded by the band, not the tile.
    A mask may also be registered as a comparison of an array already held (``region == 1``,
    ``labels != ignore``, :meth:`add_comparison`): it is then never stored whole, only evaluated
    on the windows counted (or once, to build its table), so a tile's derived masks cost no
    memory beyond the arrays they are made from. A :class:`~eoforge.chips.masks.PackedMask`
    (a bit per pixel) is unpacked a band of rows at a time, never whole.
    """

    size: int
    """Window edge in pixels."""
    _sources: dict[str, tuple[NDArray[Any] | RowSource, str, int]] = field(
        default_factory=dict, repr=False
    )
    _tables: dict[str, NDArray[np.int32]] = field(default_factory=dict, repr=False)
    _touched: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, name: str, mask: NDArray[np.bool_] | PackedMask) -> None:
        """Register a boolean mask ``(time, h, w)`` or ``(h, w)``, or a packed one."""
        if isinstance(mask, PackedMask):
            self._register(name, mask, "mask", 0)
        else:
            self._register(name, np.asarray(mask, dtype=bool), "mask", 0)

    def add_comparison(
        self, name: str, values: NDArray[Any] | RowSource, op: str, value: int
    ) -> None:
        """Register the mask ``values == value`` (``op`` ``"eq"``) or ``values != value``
        (``"ne"``) without materialising it; ``values`` may be produced by rows
        (:class:`~eoforge.chips.masks.RowSource`, e.g. labels computed strip by strip)."""
        if op not in ("eq", "ne"):
            raise ValueError(f"op must be 'eq' or 'ne', got {op!r}")
        self._register(name, values if _by_rows(values) else np.asarray(values), op, value)

    def _register(self, name: str, values: NDArray[Any] | RowSource, op: str, value: int) -> None:
        self._sources[name] = (values, op, value)
        self._tables.pop(name, None)
        self._touched[name] = 0

    def __contains__(self, name: str) -> bool:
        return name in self._sources

    @staticmethod
    def _rows(
        values: NDArray[Any] | RowSource, op: str, value: int, top: int, bottom: int
    ) -> NDArray[np.bool_]:
        """The mask's rows ``[top, bottom)`` (all of its leading axes)."""
        if not isinstance(values, np.ndarray):
            return WindowCounts._mask(values.rows(top, bottom), op, value)
        return WindowCounts._mask(values[..., top:bottom, :], op, value)

    @staticmethod
    def _mask(values: NDArray[Any], op: str, value: int) -> NDArray[np.bool_]:
        if op == "eq":
            return values == value  # type: ignore[no-any-return]
        if op == "ne":
            return values != value  # type: ignore[no-any-return]
        return values

    def count(
        self,
        name: str,
        t: NDArray[np.int64] | None,
        r: NDArray[np.int64],
        c: NDArray[np.int64],
    ) -> NDArray[np.int64]:
        """Pixels of mask ``name`` inside each window at (t, r, c); ``t`` None for 2-D masks."""
        s = self.size
        values, op, value = self._sources[name]
        touch = len(r) * s * s
        self._touched[name] += touch
        big = 4 * values.size > TABLE_BYTES  # a whole table would outgrow the bound
        if name in self._tables:
            return _table_counts(self._tables[name], t, r, c, s)
        h, w = values.shape[-2:]
        # a mask produced by rows is never made whole: no direct counting on it
        if isinstance(values, np.ndarray) and (
            self._touched[name] <= 2 * values.size or (big and touch <= values.size)
        ):
            win = sliding_window_view(values, (s, s), axis=(-2, -1))
            picked = self._mask(win[r, c] if t is None else win[t, r, c], op, value)
            return picked.sum(axis=(-2, -1), dtype=np.int64)  # type: ignore[no-any-return]
        if not big:
            self._tables[name] = _integral(self._rows(values, op, value, 0, h))
            return _table_counts(self._tables[name], t, r, c, s)
        # many windows of a large mask: summed-area tables of row bands, never of the whole
        rows = max(4 * s, TABLE_BYTES // (4 * (values.size // (h * w)) * (w + 1)))
        out = np.empty(len(r), dtype=np.int64)
        order = np.argsort(r, kind="stable")
        starts = r[order]
        for top in range(0, h - s + 1, rows):
            lo, hi = np.searchsorted(starts, [top, top + rows])
            if lo == hi:
                continue
            sel = order[lo:hi]
            band = self._rows(values, op, value, top, min(h, top + rows + s - 1))
            out[sel] = _table_counts(
                _integral(band), None if t is None else t[sel], r[sel] - top, c[sel], s
            )
        return out


def _by_rows(values: Any) -> bool:
    return not isinstance(values, np.ndarray) and callable(getattr(values, "rows", None))


#: Largest summed-area table :class:`WindowCounts` keeps (int32 per pixel); larger masks are
#: counted from tables of row bands of about this size, built per call.
TABLE_BYTES = 64 << 20


def _table_counts(
    ii: NDArray[np.int32],
    t: NDArray[np.int64] | None,
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    s: int,
) -> NDArray[np.int64]:
    if t is None:
        a, b, d, e = ii[r + s, c + s], ii[r, c + s], ii[r + s, c], ii[r, c]
    else:
        a, b, d, e = ii[t, r + s, c + s], ii[t, r, c + s], ii[t, r + s, c], ii[t, r, c]
    return a.astype(np.int64) - b - d + e  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- samplers


@dataclass
class TileSample:
    """Chip windows chosen in one tile, with their split and quality fractions."""

    t: NDArray[np.int64]
    r: NDArray[np.int64]
    c: NDArray[np.int64]
    split: NDArray[np.uint8]
    nodata_fraction: NDArray[np.float64]
    labelled_fraction: NDArray[np.float64]
    cloud_fraction: NDArray[np.float64]
    rejected: dict[str, int]

    def __len__(self) -> int:
        return len(self.t)


@dataclass
class _Candidates:
    t: NDArray[np.int64]
    r: NDArray[np.int64]
    c: NDArray[np.int64]
    split: NDArray[np.uint8]
    reason: NDArray[np.int8]  # -1 kept, else index into REJECT_REASONS
    nodata: NDArray[np.float64]
    labelled: NDArray[np.float64]
    cloud: NDArray[np.float64]

    def subset(self, sel: NDArray[Any]) -> _Candidates:
        return _Candidates(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def _evaluate(
    counts: WindowCounts,
    t: NDArray[np.int64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
    allowed: NDArray[np.bool_],
    chip: ChipSpec,
    sampling: SamplingSpec,
) -> _Candidates:
    area = counts.size * counts.size
    split = np.full(len(t), NO_SPLIT, dtype=np.uint8)
    for code in range(3):
        split[counts.count(f"region{code}", None, r, c) == area] = code
    nodata = counts.count("nodata", t, r, c) / area
    labelled_px = counts.count("labelled", t, r, c)
    labelled = labelled_px / area
    cloud = counts.count("cloud", t, r, c) / area if "cloud" in counts else np.full(len(t), np.nan)
    reason = np.full(len(t), -1, dtype=np.int8)
    in_split = split != NO_SPLIT
    checks = [
        ~in_split & (counts.count("covered", None, r, c) == 0),
        ~in_split,
        ~allowed[np.minimum(split, 2), t] & in_split,
        nodata > chip.max_nodata_fraction,
        (labelled < chip.min_labelled_fraction) | (labelled_px == 0),
        (cloud > sampling.max_cloud_fraction)
        if sampling.max_cloud_fraction is not None
        else np.zeros(len(t), dtype=bool),
    ]
    for i, bad in reversed(list(enumerate(checks))):  # the first failing check names it
        reason[bad] = i
    return _Candidates(t, r, c, split, reason, nodata, labelled, cloud)


def _grid_candidates(
    n_time: int, h: int, w: int, size: int, stride: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    rows = np.arange(0, h - size + 1, stride, dtype=np.int64)
    cols = np.arange(0, w - size + 1, stride, dtype=np.int64)
    t, r, c = np.meshgrid(np.arange(n_time, dtype=np.int64), rows, cols, indexing="ij")
    return t.ravel(), r.ravel(), c.ravel()


def _random_valid(
    counts: WindowCounts,
    shape: tuple[int, int, int],
    want: int,
    allowed: NDArray[np.bool_],
    chip: ChipSpec,
    sampling: SamplingSpec,
    rng: np.random.Generator,
    rejected: dict[str, int],
) -> _Candidates:
    """Up to ``want`` distinct valid windows drawn uniformly (rejection sampling in rounds)."""
    n_time, h, w = shape
    s = chip.size
    keys: set[int] = set()
    kept: list[_Candidates] = []
    n_kept = 0
    for _ in range(64):
        m = max(4 * (want - n_kept), 256)
        t = rng.integers(0, n_time, m)
        r = rng.integers(0, h - s + 1, m)
        c = rng.integers(0, w - s + 1, m)
        cand = _evaluate(counts, t, r, c, allowed, chip, sampling)
        _count_rejects(cand.reason, rejected)
        ok = np.flatnonzero(cand.reason < 0)
        key = (t[ok] * h + r[ok]) * w + c[ok]
        fresh = []
        for i, k in zip(ok.tolist(), key.tolist(), strict=True):
            if k not in keys:
                keys.add(k)
                fresh.append(i)
        kept.append(cand.subset(np.asarray(fresh, dtype=np.int64)))
        n_kept += len(fresh)
        if n_kept >= want:
            break
    merged = _Candidates(*(np.concatenate([getattr(k, f) for k in kept]) for f in _FIELDS))
    return merged.subset(np.arange(min(want, len(merged.t))))


_FIELDS = ("t", "r", "c", "split", "reason", "nodata", "labelled", "cloud")


def _count_rejects(reason: NDArray[np.int8], rejected: dict[str, int]) -> None:
    for i, name in enumerate(REJECT_REASONS):
        rejected[name] += int((reason == i).sum())


def _balanced(
    pool: _Candidates,
    class_counts: NDArray[np.int64],
    want: int,
    min_fraction: float,
    area: int,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Pick ``want`` pool entries so each class is *contained* in an equal number of chips.

    Classes are served rarest first; each gets chips holding at least ``min_fraction`` of it
    until its quota ``ceil(want / classes present)`` is met; the rest is filled at random.
    """
    contains = class_counts >= max(1, math.ceil(min_fraction * area))
    present = np.flatnonzero(contains.any(axis=0))
    selected = np.zeros(len(pool.t), dtype=bool)
    if present.size:
        quota = math.ceil(want / present.size)
        for k in present[np.argsort(contains[:, present].sum(axis=0), kind="stable")]:
            have = int((contains[:, k] & selected).sum())
            eligible = np.flatnonzero(contains[:, k] & ~selected)
            take = min(max(quota - have, 0), eligible.size, want - int(selected.sum()))
            if take > 0:
                selected[rng.choice(eligible, take, replace=False)] = True
    rest = np.flatnonzero(~selected)
    fill = min(want - int(selected.sum()), rest.size)
    if fill > 0:
        selected[rng.choice(rest, fill, replace=False)] = True
    return np.flatnonzero(selected)


def _class_counts(
    labels: NDArray[np.uint8] | RowSource, k: int, size: int, pool: _Candidates
) -> NDArray[np.int64]:
    counts = WindowCounts(size)
    counts.add_comparison("k", labels, "eq", k)
    return counts.count("k", pool.t, pool.r, pool.c)


def sample_tile(
    labels: NDArray[np.uint8] | RowSource,
    nodata: NDArray[np.bool_] | PackedMask,
    region: NDArray[np.uint8],
    chip: ChipSpec,
    sampling: SamplingSpec,
    ignore_index: int,
    n_classes: int,
    allowed: NDArray[np.bool_] | None = None,
    cloud: NDArray[np.bool_] | PackedMask | None = None,
    seed: Sequence[int] = (0,),
) -> TileSample:
    """Choose the chip windows of one tile.

    Args:
        labels: ``(time, h, w)`` class indices (``ignore_index`` = unlabelled), an array or
            produced by rows (:class:`~eoforge.chips.strip_labels.StripLabels`).
        nodata: ``(time, h, w)`` input nodata (any band == 0), as bool or packed bits.
        region: ``(h, w)`` split region codes (:func:`split_regions`).
        chip: size, stride and quality thresholds.
        sampling: method, cloud filter, seed.
        ignore_index: the unlabelled value of ``labels``.
        n_classes: number of classes (balanced sampling).
        allowed: ``(3, time)`` slices each split may use (:func:`temporal_mask`).
        cloud: ``(time, h, w)`` cloud mask (bool or packed), required when
            ``max_cloud_fraction`` is set.
        seed: extra entropy mixed with ``sampling.seed`` (e.g. the tile's position).

    Returns:
        The kept windows, ordered by (time, row, col), and rejection counts by reason.

    Raises:
        InputError: the chip is larger than the tile, or the cloud filter has no mask.
    """
    n_time, h, w = labels.shape
    s = chip.size
    if s > h or s > w:
        raise InputError(
            f"chip size {s} is larger than the scene ({h}x{w}); choose chips.size <= {min(h, w)}."
        )
    if allowed is None:
        allowed = np.ones((3, n_time), dtype=bool)
    counts = WindowCounts(s)
    for code in range(3):
        counts.add_comparison(f"region{code}", region, "eq", code)
    counts.add_comparison("covered", region, "eq", COVERED)
    counts.add("nodata", nodata)
    counts.add_comparison("labelled", labels, "ne", ignore_index)
    if sampling.max_cloud_fraction is not None:
        if cloud is None:
            raise InputError("sampling.max_cloud_fraction is set but no cloud mask was given.")
        counts.add("cloud", cloud)
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    rng = np.random.default_rng([sampling.seed, *seed])
    if sampling.method == "grid":
        t, r, c = _grid_candidates(n_time, h, w, s, chip.stride)
        cand = _evaluate(counts, t, r, c, allowed, chip, sampling)
        _count_rejects(cand.reason, rejected)
        kept = cand.subset(cand.reason < 0)
    elif sampling.method == "random":
        kept = _random_valid(
            counts, (n_time, h, w), sampling.chips_per_tile, allowed, chip, sampling, rng, rejected
        )
    else:
        pool = _random_valid(
            counts, (n_time, h, w), 8 * sampling.chips_per_tile, allowed, chip, sampling, rng,
            rejected,
        )  # fmt: skip
        per_class = np.stack(
            [_class_counts(labels, k, s, pool) for k in range(n_classes)],
            axis=1,
        )
        pick = _balanced(
            pool, per_class, sampling.chips_per_tile, sampling.min_class_fraction, s * s, rng
        )
        kept = pool.subset(pick)
    order = np.lexsort((kept.c, kept.r, kept.t))
    kept = kept.subset(order)
    return TileSample(
        kept.t, kept.r, kept.c, kept.split, kept.nodata, kept.labelled, kept.cloud, rejected
    )
