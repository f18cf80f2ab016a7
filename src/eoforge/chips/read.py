"""Read a chip store (ADR 0001) back for training: root attributes, one split, class weights.

Numpy only (no torch): the splits come back as host arrays in a :class:`ChipSplit`, checked for
the dtypes and shapes the layout promises; a missing or malformed store is an
:class:`~eoforge.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from eoforge.chips.cut import read_split
from eoforge.errors import InputError

__all__ = ["ChipSplit", "class_weights", "read_chip_split", "read_chip_store_attrs"]


@dataclass(frozen=True)
class ChipSplit:
    """One split of a chip store, in memory."""

    x: NDArray[np.uint16]
    """Raw DN, ``(n, bands, size, size)``."""
    y: NDArray[np.uint8]
    """Class indices, ``(n, size, size)``, ignore_index where unlabelled."""


def read_chip_store_attrs(chips_path: Path) -> dict[str, Any]:
    """Root attributes of a chip store (bands, classes, ignore_index, band_mean, band_std, ...).

    Raises:
        InputError: the store is missing or lacks a required attribute.
    """
    root = _open_store(chips_path)
    attrs = dict(root.attrs)
    missing = [
        k for k in ("bands", "classes", "ignore_index", "band_mean", "band_std") if k not in attrs
    ]
    if missing:
        raise InputError(
            f"chip store '{chips_path}' lacks root attributes {missing} (ADR 0001); "
            "rebuild it with the chips stage."
        )
    return attrs


def read_chip_split(chips_path: Path, split: str) -> ChipSplit:
    """Read one split (``train``, ``val`` or ``test``) of a chip store into memory.

    Raises:
        InputError: the split is missing or its arrays have the wrong dtype / shape.
    """
    _open_store(chips_path)
    try:
        x, y = read_split(chips_path, split)
    except (KeyError, AssertionError, FileNotFoundError) as exc:
        raise InputError(
            f"chip store '{chips_path}' has no split '{split}' with arrays x and y; "
            "rebuild it with the chips stage."
        ) from exc
    if (
        x.dtype != np.uint16
        or x.ndim != 4
        or y.dtype != np.uint8
        or y.shape != (x.shape[0], *x.shape[2:])
    ):
        raise InputError(
            f"chip store '{chips_path}' split '{split}': expected x uint16 (n, bands, s, s) and "
            f"y uint8 (n, s, s), got x {x.dtype}{x.shape} and y {y.dtype}{y.shape}; "
            "rebuild it with the chips stage."
        )
    return ChipSplit(x=x, y=y)


def class_weights(
    y: NDArray[np.uint8], num_classes: int, ignore_index: int, power: float
) -> NDArray[np.float32]:
    """Cross-entropy class weights ``frequency ** -power``, scaled to average 1 per pixel.

    Classes absent from ``y`` get weight 0 (they contribute no pixels anyway).
    """
    counts = np.bincount(y[y != ignore_index].ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(int(counts.sum()), 1)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = freq > 0
    weights[present] = freq[present] ** -power
    scale = float((freq * weights).sum())
    if scale > 0:
        weights /= scale
    return weights.astype(np.float32)


def _open_store(chips_path: Path) -> zarr.Group:
    if not Path(chips_path).exists():
        raise InputError(
            f"chip store '{chips_path}' does not exist; run the chips stage first or fix the path."
        )
    try:
        return zarr.open_group(str(chips_path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-group path
        raise InputError(f"'{chips_path}' is not a Zarr chip store: {exc}") from exc
