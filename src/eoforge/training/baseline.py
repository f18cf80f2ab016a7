"""Per-pixel random-forest baseline trained on the same chip split as the network.

Every report shows the network against this baseline. Features come from one function,
:func:`pixel_features`, used both when fitting and when predicting, so the two never drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import RandomForestClassifier

from eoforge.chips.read import read_chip_split, read_chip_store_attrs
from eoforge.config import TrainSpec
from eoforge.errors import InputError

__all__ = [
    "DEFAULT_BANDS",
    "NODATA_LABEL",
    "feature_names",
    "pixel_features",
    "predict_scene",
    "train_random_forest",
]

#: Band order assumed when none is given (the chip store's default ``bands``).
DEFAULT_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
#: Label written where any input band is nodata.
NODATA_LABEL = 255

# Normalised differences added when both bands are present: (a - b) / (a + b).
_INDICES: tuple[tuple[str, str, str], ...] = (
    ("ndvi", "nir", "red"),
    ("ndwi", "green", "nir"),
)


def feature_names(band_names: Sequence[str] = DEFAULT_BANDS) -> list[str]:
    """Names of the columns :func:`pixel_features` returns for these bands."""
    names = list(band_names)
    names += [name for name, a, b in _INDICES if a in band_names and b in band_names]
    return names


def pixel_features(
    bands: NDArray[Any], band_names: Sequence[str] = DEFAULT_BANDS
) -> NDArray[np.float32]:
    """Per-pixel feature table: the raw bands plus NDVI / NDWI where their bands exist.

    Args:
        bands: ``(C, H, W)`` raw DN (any numeric dtype).
        band_names: name of each of the ``C`` bands, in order.

    Returns:
        ``(H * W, F)`` float32, rows in C order of the pixels, columns as :func:`feature_names`.

    Raises:
        InputError: ``bands`` is not 3-D or ``band_names`` does not match its band count.
    """
    if bands.ndim != 3 or bands.shape[0] != len(band_names):
        raise InputError(
            f"bands must be (C, H, W) with C = {len(band_names)} ({list(band_names)}), "
            f"got shape {bands.shape}; pass one scene's bands in the chip store's band order."
        )
    raw = bands.reshape(bands.shape[0], -1).astype(np.float32)
    columns = list(raw)
    index = {name: i for i, name in enumerate(band_names)}
    for _, a, b in _INDICES:
        if a in index and b in index:
            num, den = raw[index[a]] - raw[index[b]], raw[index[a]] + raw[index[b]]
            columns.append(np.divide(num, den, out=np.zeros_like(num), where=den != 0))
    return np.stack(columns, axis=1)


def train_random_forest(chips_path: Path, spec: TrainSpec) -> RandomForestClassifier:
    """Fit a seeded random forest on labelled pixels sampled from the ``train`` split.

    Up to ``spec.rf_train_pixels`` pixels are drawn among those labelled and with every band
    valid (non-zero). Sampling is class-balanced where a class has too few pixels for its
    equal share: each class gets ``n / K`` pixels (all of them if it has fewer) and the
    remaining budget is filled uniformly from the other pixels.

    Args:
        chips_path: chip store (ADR 0001) with a ``train`` split.
        spec: ``seed``, ``rf_n_estimators``, ``rf_max_depth``, ``rf_train_pixels``.

    Returns:
        The fitted classifier (``n_jobs=-1``, ``random_state=spec.seed``); its classes are
        the chip store's class indices.

    Raises:
        InputError: the chip store is missing or has no usable labelled pixels.
    """
    attrs = read_chip_store_attrs(chips_path)
    band_names = list(attrs["bands"])
    ignore_index = int(attrs["ignore_index"])
    train = read_chip_split(chips_path, "train")
    pixels = np.moveaxis(train.x, 1, 0).reshape(train.x.shape[1], -1)  # (C, n * s * s)
    labels = train.y.reshape(-1)
    valid = (labels != ignore_index) & (pixels != 0).all(axis=0)
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        raise InputError(
            f"chip store '{chips_path}' has no labelled pixels with valid bands in 'train'; "
            "check the labels and the chip filters."
        )
    rng = np.random.default_rng(spec.seed)
    chosen = _balanced_sample(candidates, labels[candidates], spec.rf_train_pixels, rng)
    forest = RandomForestClassifier(
        n_estimators=spec.rf_n_estimators,
        max_depth=spec.rf_max_depth,
        n_jobs=-1,
        random_state=spec.seed,
    )
    # The chosen pixels as a (C, n, 1) "scene": the same feature function as at predict time.
    forest.fit(pixel_features(pixels[:, chosen, None], band_names), labels[chosen])
    return forest


def predict_scene(
    rf: RandomForestClassifier,
    bands: NDArray[np.uint16],
    nodata: int = 0,
    band_names: Sequence[str] = DEFAULT_BANDS,
) -> NDArray[np.uint8]:
    """Classify every pixel of a scene; :data:`NODATA_LABEL` where any band is ``nodata``.

    Args:
        rf: a forest from :func:`train_random_forest`.
        bands: ``(C, H, W)`` raw DN.
        nodata: the bands' nodata value.
        band_names: name of each band, in order (as in the chip store the forest saw).

    Returns:
        ``(H, W)`` uint8 class indices.

    Raises:
        InputError: the bands do not give the features the forest was fitted on.
    """
    features = pixel_features(bands, band_names)
    if features.shape[1] != rf.n_features_in_:
        raise InputError(
            f"the forest was fitted on {rf.n_features_in_} features, these bands "
            f"{list(band_names)} give {features.shape[1]}; pass the chip store's bands."
        )
    valid = (bands != nodata).all(axis=0).reshape(-1)
    out = np.full(valid.shape, NODATA_LABEL, dtype=np.uint8)
    if valid.any():
        out[valid] = rf.predict(features[valid]).astype(np.uint8)
    return out.reshape(bands.shape[1:])


def _balanced_sample(
    candidates: NDArray[np.intp],
    labels: NDArray[np.uint8],
    budget: int,
    rng: np.random.Generator,
) -> NDArray[np.intp]:
    """Indices into ``candidates``' space: rare classes kept whole, the rest filled uniformly."""
    if candidates.size <= budget:
        return candidates
    classes = np.unique(labels)
    share = budget // len(classes)
    taken: list[NDArray[np.intp]] = []
    for cls in classes:
        members = candidates[labels == cls]
        if members.size <= share:
            taken.append(members)
    kept = np.concatenate(taken) if taken else np.empty(0, dtype=np.intp)
    rest = np.setdiff1d(candidates, kept, assume_unique=True)
    fill = rng.choice(rest, size=budget - kept.size, replace=False)
    return np.sort(np.concatenate([kept, fill]))
