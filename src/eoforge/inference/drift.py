"""Drift monitoring: a reference profile of the model's training inputs and predictions, a profile
of every predicted scene, and scores of one against the other.

A profile holds, per input band, a histogram of the raw DN of the clear pixels (valid and
predicted as a surface class, away from predicted cloud and shadow) on a fixed fine grid
(:data:`FINE_STEP` DN wide bins up to :data:`FINE_MAX`, above it in the last bin) and quantiles
read from it, the valid fraction of the pixels, and the fractions of the predicted classes. It
is accumulated strip by strip (:class:`ProfileAccumulator`;
fed by the predictor as it writes a scene, :class:`eoforge.inference.drift_scene.TimedProfile`,
or :func:`eoforge.inference.drift_scene.profile_scene`, which reads a predicted scene's rows and
its class COG again, a strip at a time), so memory is one strip and one histogram whatever the scene's
size. The model's reference (:func:`reference_from_chips`, written next to ``model.onnx`` as
:data:`REFERENCE_NAME` by the training stage) is the same profile of its training chips and its
own predictions on them, plus the spread between the training scenes (dates).

Scores of a scene against the reference (:func:`drift_scores`):

- ``band_shift``: per band the larger of two moves of the scene's clear pixels from the
  reference, each in units of the largest such move of any single training scene from the
  pooled reference (the natural spread between dates): the *level* (``band_level_shift``: the
  quartiles p25, p50, p75; at least :data:`MIN_SPREAD_DN`), which haze, offsets, other units
  and swapped bands move, and the *shape* (``band_shape_shift``: the log of the interquartile
  range, against the mean of the training dates' own; at least :data:`MIN_LOG_IQR_SPREAD`),
  which a gain (brightness x1.3) or another
  landscape (the neighbouring tile) changes while the day-to-day atmosphere mostly adds an
  offset. Only training scenes at most :data:`SPREAD_MAX_OBSCURED` obscured enter the spread:
  the few clear pixels of a mostly cloudy date are a small, clustered sample of the landscape
  beside clouds, not a measure of how clear days differ;
- ``obscured_fraction``: the share of the scene predicted cloud or shadow;
- reported, not deciding: ``band_psi`` (population stability index over ten equal-frequency
  bins of the reference), ``band_wasserstein_iqr`` (scipy's 1-Wasserstein distance over the
  reference's interquartile range), ``class_psi`` of the surface classes' fractions and
  ``valid_fraction_delta``. On the bundled sample PSI and Wasserstein flag real dates of the
  training tile as drifted (atmosphere varies that much from day to day), so they do not decide.

A scene drifted when any band's shift exceeds the reference's ``shift_threshold`` (the largest
leave-one-date-out shift of its clear training dates, at least :data:`SHIFT_THRESHOLD`:
:func:`loo_threshold`) or more than
:data:`OBSCURED_MAX` of it is cloud or shadow (``benchmarks/drift.py`` measures the detection
rates on the bundled sample and shifted variants of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError
from eoforge.inference.host_threads import over_row_bands
from eoforge.inference.windows import _valid_pixels

__all__ = [
    "FINE_MAX",
    "FINE_STEP",
    "MIN_LOG_IQR_SPREAD",
    "OBSCURED_MAX",
    "REFERENCE_NAME",
    "SHIFT_THRESHOLD",
    "SPREAD_MAX_OBSCURED",
    "ProfileAccumulator",
    "drift_scores",
    "item_summary",
    "load_reference",
    "loo_threshold",
    "merge",
    "reference_from_chips",
    "reference_profile",
]

#: File of the reference profile in a model directory.
REFERENCE_NAME = "drift-reference.json"
#: Width of the fine histogram bins, in DN.
FINE_STEP = 64
#: Upper edge of the fine histogram (values at or above it count in the last bin).
FINE_MAX = 20480
FINE_BINS = FINE_MAX // FINE_STEP
_FINE_SHIFT = FINE_STEP.bit_length() - 1  # FINE_STEP is a power of 2
#: Equal-frequency bins of the reference used for the PSI.
PSI_BINS = 10
#: PSI of a large shift by the usual rule of thumb (reported beside the scores, not deciding).
PSI_THRESHOLD = 0.25
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Quantiles whose shift decides drift (robust to the tails that cloud edges fill).
SHIFT_QUANTILES = ("p25", "p50", "p75")
#: A band drifted when a quantile moved more than this many times the largest shift of any
#: training scene from the pooled reference (at least :data:`MIN_SPREAD_DN`).
SHIFT_THRESHOLD = 2.0
MIN_SPREAD_DN = 128.0
#: Smallest spread of the log interquartile range: a 10 % change of the IQR (the sun sinks
#: and crops ripen or are cut between dates ten days apart in August; smaller changes are not
#: resolved against a spread estimated from three or four clear dates).
MIN_LOG_IQR_SPREAD = 0.1
#: Training scenes more obscured than this do not enter the spread between dates.
SPREAD_MAX_OBSCURED = 0.5
_EPS = 1e-4
FORMAT = "eoforge-drift-profile/1"


#: Predicted classes that hide the surface: their pixels are left out of the band histograms.
OBSCURING = ("cloud", "shadow")
#: Pixels this close (in pixels, 8-connected) to predicted cloud or shadow are not clear surface.
CLOUD_BUFFER_PX = 3
#: Share of the classified pixels predicted cloud or shadow above which a scene drifted.
OBSCURED_MAX = 0.8


class ProfileAccumulator:
    """Band histograms of the clear pixels and class counts of a scene (or of chips).

    Only pixels that are valid (no band equals ``nodata``) and predicted as a surface class
    (not one of :data:`OBSCURING`) enter the band histograms: weather changes how much of a
    scene is cloud from day to day, which the class fractions record, while the surface under
    it is what a model was trained on.
    """

    def __init__(self, bands: Sequence[str], classes: Sequence[str], nodata: float = 0) -> None:
        self.bands = list(bands)
        self.classes = list(classes)
        self.nodata = nodata
        self.obscuring = [k for k, c in enumerate(self.classes) if c in OBSCURING]
        self.hist = np.zeros((len(self.bands), FINE_BINS), np.int64)
        self.class_counts = np.zeros(len(self.classes), np.int64)
        self.pixels = 0
        self.valid = 0

    def add(self, bands: npt.NDArray[Any], classes: npt.NDArray[Any]) -> None:
        """Add raw DN ``(C, ...)`` and the predicted classes ``(...)`` of the same pixels
        (class values outside the schema, e.g. nodata 255, count as unclassified)."""
        arr = np.asarray(bands)
        cls = np.asarray(classes)
        if arr.shape[0] != len(self.bands) or arr.shape[1:] != cls.shape:
            raise InputError(
                f"drift profile: bands {arr.shape} and classes {cls.shape} must be (C, ...) and "
                f"(...) with C = {len(self.bands)} ({self.bands})."
            )
        flat = arr.reshape(arr.shape[0], -1)
        # 1 byte per pixel for the classes and masks, the bands' own dtype for the bins
        cls = cls.reshape(-1)
        if cls.dtype != np.uint8:  # outside 0..255 (e.g. -1): unclassified, like 255
            cls = np.where((cls < 0) | (cls > 255), 255, cls).astype(np.uint8)
        valid = _valid_pixels(flat, self.nodata)
        self.pixels += flat.shape[1]
        self.valid += int(np.count_nonzero(valid))
        if len(self.classes) <= 16:  # a few compares beat bincount's cast to 8-byte indices
            labelled = np.where(valid, cls, np.uint8(255))
            self.class_counts += [np.count_nonzero(labelled == k) for k in range(len(self.classes))]
        else:
            self.class_counts += np.bincount(cls[valid], minlength=256)[: len(self.classes)]
        hidden = cls >= len(self.classes)  # obscuring or outside the schema (no table lookup:
        for k in self.obscuring:  # 10x slower a pixel than the compares)
            hidden |= cls == k
        shape = np.asarray(classes).shape
        if len(shape) == 2 and CLOUD_BUFFER_PX and hidden.any():
            # cloud and shadow edges and the thin haze around them are not clear surface:
            # within CLOUD_BUFFER_PX (8-connected), a square, dilated as two 1-D maxima
            hidden = _dilated(hidden.reshape(shape), CLOUD_BUFFER_PX).reshape(-1)
        clear = valid & ~hidden
        parts: list[npt.NDArray[np.int64]] = []

        def histograms(px: slice) -> None:  # bands of pixels on the host threads
            hist, keep = np.zeros_like(self.hist), np.flatnonzero(clear[px])
            for b in range(flat.shape[0]):
                values = flat[b, px].take(keep)
                if np.issubdtype(values.dtype, np.integer):  # floor division by a power of 2
                    idx = np.right_shift(values, _FINE_SHIFT)
                else:
                    idx = values.astype(np.float64) // FINE_STEP
                idx = np.clip(idx, 0, FINE_BINS - 1, out=idx if idx.dtype.kind in "iu" else None)
                hist[b] = np.bincount(idx.astype(np.intp, copy=False), minlength=FINE_BINS)
            parts.append(hist)

        over_row_bands(histograms, flat.shape[1], min_rows=1 << 16)
        self.hist += np.sum(parts, axis=0)

    def profile(self) -> dict[str, Any]:
        """The profile as a JSON-able dict."""
        totals = np.maximum(self.hist.sum(axis=1, keepdims=True), 1)
        classified = max(int(self.class_counts.sum()), 1)
        obscured = sum(
            int(n) for c, n in zip(self.classes, self.class_counts, strict=True) if c in OBSCURING
        )
        return {
            "format": FORMAT,
            "bands": self.bands,
            "classes": self.classes,
            "fine_step": FINE_STEP,
            "fine_max": FINE_MAX,
            "histograms": self.hist.tolist(),
            "quantiles": {
                name: _quantiles(self.hist[b] / totals[b]) for b, name in enumerate(self.bands)
            },
            "pixels": self.pixels,
            "valid_fraction": self.valid / max(self.pixels, 1),
            "class_fractions": (self.class_counts / classified).tolist(),
            "obscured_fraction": obscured / classified,
        }


def _dilated(mask: npt.NDArray[np.bool_], px: int) -> npt.NDArray[np.bool_]:
    """``mask`` (H, W) dilated by ``px`` pixels (a square), as two 1-D maxima on the host threads."""
    from scipy.ndimage import maximum_filter1d

    near, size = mask.view(np.uint8), 2 * px + 1
    along, out = np.empty_like(near), np.empty_like(near)

    def rows(r: slice) -> None:
        maximum_filter1d(near[r], size, axis=1, output=along[r], mode="constant", cval=0)

    def columns(c: slice) -> None:
        maximum_filter1d(along[:, c], size, axis=0, output=out[:, c], mode="constant", cval=0)

    over_row_bands(rows, near.shape[0])
    over_row_bands(columns, near.shape[1])
    return out.view(bool)


def merge(accumulators: Sequence[ProfileAccumulator]) -> ProfileAccumulator:
    """One accumulator holding the pixels of all of them (same bands and classes)."""
    if not accumulators:
        raise InputError("drift reference: no scenes to build it from; pass training scenes.")
    first = accumulators[0]
    out = ProfileAccumulator(first.bands, first.classes, first.nodata)
    for acc in accumulators:
        if acc.bands != out.bands or acc.classes != out.classes:
            raise InputError("drift reference: scenes with different bands or classes.")
        out.hist += acc.hist
        out.class_counts += acc.class_counts
        out.pixels += acc.pixels
        out.valid += acc.valid
    return out


def _pooled_with_spread(scenes: Sequence[ProfileAccumulator]) -> dict[str, Any]:
    """The pooled profile of ``scenes`` and the spread of the clear ones around it."""
    pooled = merge(scenes).profile()
    center = _band_stats(pooled)
    profiles = [acc.profile() for acc in scenes if acc.hist.any()]
    steady = [p for p in profiles if p["obscured_fraction"] <= SPREAD_MAX_OBSCURED] or profiles
    if steady:
        # pooling dates of different levels widens the range: the shape is each date's own
        center[:, 3] = np.mean([_band_stats(p)[:, 3] for p in steady], axis=0)
    pooled["log_iqr"] = dict(zip(pooled["bands"], map(float, center[:, 3]), strict=True))
    offsets = [np.abs(_band_stats(p) - center) for p in steady]
    spread = np.max(offsets, axis=0) if offsets else np.zeros_like(center)
    pooled["spread"] = {
        name: dict(zip(_STATS, map(float, spread[b]), strict=True))
        for b, name in enumerate(pooled["bands"])
    }
    pooled["scenes"] = len(scenes)
    pooled["spread_scenes"] = len(steady)
    pooled["scene_obscured_fractions"] = [p["obscured_fraction"] for p in profiles]
    return pooled


def reference_profile(scenes: Sequence[ProfileAccumulator]) -> dict[str, Any]:
    """The model's reference: the pooled profile of its training scenes, plus how far each
    scene's band quartiles and log interquartile range lie from the pooled ones (the natural
    spread between dates that a new scene is measured in, see :func:`drift_scores`), from the
    scenes at most :data:`SPREAD_MAX_OBSCURED` obscured (all of them when none is), and the
    band-shift threshold calibrated on them (:func:`loo_threshold`)."""
    reference = _pooled_with_spread(scenes)
    reference["shift_threshold"] = loo_threshold(scenes)
    return reference


def loo_threshold(scenes: Sequence[ProfileAccumulator]) -> float:
    """The band-shift threshold of a reference: the largest band shift of any of its clear
    training scenes (at most :data:`SPREAD_MAX_OBSCURED` obscured) scored against the
    reference of the *other* scenes, and at least :data:`SHIFT_THRESHOLD`.

    A new date of the same place and season is as likely as each training date to be the one
    farthest from the rest, so the training dates' own leave-one-out shifts say how far a
    normal date lands; with fewer than three clear scenes there is no spread to leave one out
    of, and the fixed threshold stays.
    """
    clear = [
        i
        for i, acc in enumerate(scenes)
        if acc.hist.any() and acc.profile()["obscured_fraction"] <= SPREAD_MAX_OBSCURED
    ]
    if len(clear) < 3:
        return SHIFT_THRESHOLD
    worst = 0.0
    for i in clear:
        others = _pooled_with_spread([acc for j, acc in enumerate(scenes) if j != i])
        worst = max(worst, drift_scores(scenes[i].profile(), others)["max_band_shift"])
    return max(SHIFT_THRESHOLD, worst)


_STATS = (*SHIFT_QUANTILES, "log_iqr")


def _band_quantiles(profile: dict[str, Any]) -> npt.NDArray[np.float64]:
    return np.array(
        [[profile["quantiles"][b][q] for q in SHIFT_QUANTILES] for b in profile["bands"]]
    )


def _band_stats(profile: dict[str, Any]) -> npt.NDArray[np.float64]:
    """Per band: the quartiles (DN) and the log of the interquartile range."""
    q = _band_quantiles(profile)
    log_iqr = np.log(np.maximum(q[:, 2] - q[:, 0], FINE_STEP))
    return np.concatenate([q, log_iqr[:, None]], axis=1)


def _quantiles(p: npt.NDArray[np.float64]) -> dict[str, float]:
    cdf = np.cumsum(p)
    edges = np.arange(1, FINE_BINS + 1) * FINE_STEP
    out = {}
    for q in QUANTILES:
        k = int(np.searchsorted(cdf, q))
        k = min(k, FINE_BINS - 1)
        below = cdf[k - 1] if k else 0.0
        inside = max(cdf[k] - below, 1e-12)
        out[f"p{round(q * 100):02d}"] = float(edges[k] - FINE_STEP * (1 - (q - below) / inside))
    return out


def _psi(p: npt.NDArray[np.float64], q: npt.NDArray[np.float64]) -> float:
    p = np.maximum(p, _EPS)
    q = np.maximum(q, _EPS)
    return float(np.sum((p - q) * np.log(p / q)))


def _psi_edges(ref_hist: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Fine-bin indices splitting the reference into ~equal-frequency bins."""
    cdf = np.cumsum(ref_hist) / max(ref_hist.sum(), 1)
    cuts = np.searchsorted(cdf, np.arange(1, PSI_BINS) / PSI_BINS) + 1
    return np.unique(np.clip(cuts, 1, FINE_BINS - 1))


def drift_scores(profile: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Scores of a scene's profile against the model's reference profile (see the module).

    Raises:
        InputError: the profiles describe different bands or grids.
    """
    from scipy.stats import wasserstein_distance

    for key in ("bands", "fine_step", "fine_max"):
        if profile[key] != reference[key]:
            raise InputError(
                f"drift profile {key} {profile[key]} differs from the model reference's "
                f"{reference[key]}; profile the scene with the model's bands."
            )
    centers = (np.arange(FINE_BINS) + 0.5) * FINE_STEP
    psi, wass = [], []
    for b, name in enumerate(reference["bands"]):
        ref = np.asarray(reference["histograms"][b], np.float64)
        cur = np.asarray(profile["histograms"][b], np.float64)
        if cur.sum() == 0 or ref.sum() == 0:
            psi.append(float("inf") if cur.sum() != ref.sum() else 0.0)
            wass.append(float("inf") if cur.sum() != ref.sum() else 0.0)
            continue
        cuts = _psi_edges(ref)
        psi.append(_psi(_coarse(ref, cuts), _coarse(cur, cuts)))
        qs = reference["quantiles"][name]
        iqr = max(qs["p75"] - qs["p25"], FINE_STEP)
        wass.append(float(wasserstein_distance(centers, centers, ref, cur)) / iqr)
    surface = [c not in OBSCURING for c in reference["classes"]]
    ref_cls = np.asarray(reference["class_fractions"], np.float64)[surface]
    cur_cls = np.asarray(profile["class_fractions"], np.float64)[surface]
    class_psi = (
        _psi(cur_cls / cur_cls.sum(), ref_cls / ref_cls.sum())
        if cur_cls.sum() > 0 and ref_cls.sum() > 0
        else 0.0
    )
    spread = np.maximum(
        np.array(
            [[reference["spread"][b][q] for q in SHIFT_QUANTILES] for b in reference["bands"]]
        ),
        MIN_SPREAD_DN,
    )
    level = (np.abs(_band_quantiles(profile) - _band_quantiles(reference)) / spread).max(axis=1)
    shape = np.zeros(len(reference["bands"]))
    if "log_iqr" in reference:
        # references written before the shape score have no IQR spread: level only
        iqr_spread = np.maximum(
            [reference["spread"][b]["log_iqr"] for b in reference["bands"]], MIN_LOG_IQR_SPREAD
        )
        iqr_center = np.array([reference["log_iqr"][b] for b in reference["bands"]])
        shape = np.abs(_band_stats(profile)[:, 3] - iqr_center) / iqr_spread
    if sum(sum(h) for h in profile["histograms"]) == 0:
        level = shape = np.zeros(len(reference["bands"]))  # no clear pixel: the cloud rule speaks
    level, shape = np.nan_to_num(level), np.nan_to_num(shape)
    shift = np.maximum(level, shape)
    threshold = float(reference.get("shift_threshold", SHIFT_THRESHOLD))
    reasons = [
        f"band {name}: quantiles moved {lv:.2f} x the training scenes' spread > {threshold:.2f}"
        for name, lv in zip(reference["bands"], level, strict=True)
        if lv > threshold
    ] + [
        f"band {name}: interquartile range changed {sh:.2f} x the training scenes' spread > "
        f"{threshold:.2f}"
        for name, sh in zip(reference["bands"], shape, strict=True)
        if sh > threshold
    ]
    if profile["obscured_fraction"] > OBSCURED_MAX:
        reasons.append(
            f"{profile['obscured_fraction']:.0%} predicted {'/'.join(OBSCURING)} > {OBSCURED_MAX:.0%}"
        )
    return {
        "band_psi": dict(zip(reference["bands"], psi, strict=True)),
        "band_wasserstein_iqr": dict(zip(reference["bands"], wass, strict=True)),
        "band_shift": dict(zip(reference["bands"], map(float, shift), strict=True)),
        "band_level_shift": dict(zip(reference["bands"], map(float, level), strict=True)),
        "band_shape_shift": dict(zip(reference["bands"], map(float, shape), strict=True)),
        "max_band_shift": float(shift.max()),
        "max_band_psi": max(psi),
        "max_band_wasserstein_iqr": max(wass),
        "class_psi": class_psi,
        "obscured_fraction": profile["obscured_fraction"],
        "valid_fraction_delta": profile["valid_fraction"] - reference["valid_fraction"],
        "thresholds": {
            "band_shift": threshold,
            "psi": PSI_THRESHOLD,
            "obscured_fraction": OBSCURED_MAX,
        },
        "drifted": bool(reasons),
        "reasons": reasons,
    }


def _coarse(hist: npt.NDArray[np.float64], cuts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    sums = np.add.reduceat(hist, np.concatenate([[0], cuts]))
    return np.asarray(sums / max(hist.sum(), 1), np.float64)


def load_reference(model_dir: Path) -> dict[str, Any] | None:
    """The model's reference profile, or None for a model stored without one."""
    path = Path(model_dir) / REFERENCE_NAME
    if not path.is_file():
        return None
    import json

    try:
        reference: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(
            f"drift reference '{path}' is not JSON ({exc}); re-export the model."
        ) from exc
    if reference.get("format") != FORMAT:
        raise InputError(
            f"drift reference '{path}' has format {reference.get('format')!r}, expected "
            f"{FORMAT!r}; re-export the model."
        )
    return reference


def item_summary(profile: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """What goes into a prediction item (``eoforge:drift``): the profile without fine histograms."""
    small = {k: v for k, v in profile.items() if k != "histograms"}
    return {"profile": small, "scores": scores}


def reference_from_chips(
    session: Any,
    x: npt.NDArray[Any],
    scene_of_chip: Sequence[str],
    bands: Sequence[str],
    classes: Sequence[str],
    per_scene: int = 48,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference profile of a model from its training chips and its own predictions on them.

    Args:
        session: the model's ONNX Runtime session (input ``image``, output ``logits``).
        x: training chips ``(N, C, h, w)`` raw DN.
        scene_of_chip: the scene (item id) of each chip; each scene is one date of the spread.
        bands: band names of ``C``.
        classes: class names of the model's outputs.
        per_scene: at most this many chips of each scene are profiled (seeded sample).
        seed: sample seed.
    """
    from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME

    if len(scene_of_chip) != len(x):
        raise InputError(
            f"drift reference: {len(scene_of_chip)} scene ids for {len(x)} chips; rebuild chips."
        )
    rng = np.random.default_rng(seed)
    scenes = []
    ids = np.asarray(scene_of_chip, dtype=object)
    for scene in sorted(set(ids.tolist())):
        rows = np.flatnonzero(ids == scene)
        rows = np.sort(rng.choice(rows, size=min(per_scene, len(rows)), replace=False))
        acc = ProfileAccumulator(bands, classes)
        for start in range(0, len(rows), 8):
            batch = np.ascontiguousarray(x[rows[start : start + 8]], dtype=np.float32)
            (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
            predicted = np.asarray(logits).argmax(axis=1).astype(np.uint8)
            for chip, cls in zip(batch, predicted, strict=True):
                acc.add(chip, cls)
        scenes.append(acc)
    return reference_profile(scenes)
