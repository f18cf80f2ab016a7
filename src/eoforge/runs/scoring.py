"""Score a predicted scene against its truth a chunk row at a time: confusion matrices of the
model and the baseline, and the decimated maps the quicklooks draw, with memory bounded by the
strip, not the scene.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.cube.tiles import CubeTile
from eoforge.errors import InputError
from eoforge.training.metrics import confusion_matrix

__all__ = ["SceneScore", "decimation_step", "score_scene"]

#: Longest side of a quicklook (the default of :mod:`eoforge.runs.report`'s figures).
QUICKLOOK_SIZE = 1024


def decimation_step(height: int, width: int, max_size: int = QUICKLOOK_SIZE) -> int:
    """Every n-th pixel a quicklook keeps (as :func:`eoforge.runs.report._decimate`)."""
    return max(1, -(-max(height, width) // max_size))


@dataclass
class SceneScore:
    """What :func:`score_scene` measured of one scene."""

    cm_model: NDArray[np.int64]
    cm_base: NDArray[np.int64]
    truth: NDArray[np.uint8]
    """Decimated truth (every :func:`decimation_step`-th pixel)."""
    pred: NDArray[np.uint8]
    base: NDArray[np.uint8]
    rgb: NDArray[Any] | None = field(default=None)
    """Decimated ``(3, h, w)`` red, green, blue bands, when asked for."""


def _every(rows: NDArray[Any], top: int, step: int) -> NDArray[Any]:
    """The rows and columns of a strip starting at tile row ``top`` that a decimation keeps."""
    return rows[..., (-top) % step :: step, ::step]


def score_scene(
    tile: CubeTile,
    t: int,
    truth_rows: Callable[[int, int], NDArray[np.uint8]],
    pred_tif: Path,
    base_tif: Path,
    n_classes: int,
    ignore_index: int,
    rgb_bands: Sequence[str] | None = None,
    max_size: int = QUICKLOOK_SIZE,
) -> SceneScore:
    """Confusion matrices of ``pred_tif`` and ``base_tif`` against ``truth_rows``, strip by strip.

    Args:
        tile: the scene's cube tile (its chunk rows set the strips).
        t: the scene's time slice.
        truth_rows: class rows ``[top, bottom)`` of the truth.
        pred_tif: the model's class map.
        base_tif: the baseline's class map.
        n_classes: classes of the schema.
        ignore_index: truth value that is not scored.
        rgb_bands: cube variables to keep, decimated, for the true-colour quicklook.
        max_size: longest side of the decimated maps.

    Raises:
        InputError: a class map's size differs from the tile's.
    """
    import rasterio
    from rasterio.windows import Window

    h, w = tile.grid.height, tile.grid.width
    step = decimation_step(h, w, max_size)
    cm_model = np.zeros((n_classes, n_classes), np.int64)
    cm_base = np.zeros((n_classes, n_classes), np.int64)
    kept: dict[str, list[NDArray[Any]]] = {"truth": [], "pred": [], "base": [], "rgb": []}
    with rasterio.open(pred_tif) as pred_src, rasterio.open(base_tif) as base_src:
        for src in (pred_src, base_src):
            if (src.height, src.width) != (h, w):
                raise InputError(
                    f"class map '{src.name}' is {src.height}x{src.width}, its cube tile "
                    f"'{tile.grid.tile}' {h}x{w}; predict the scene again."
                )
        for top, bottom in tile.strips():
            window = Window(0, top, w, bottom - top)
            truth = truth_rows(top, bottom)
            pred = pred_src.read(1, window=window)
            base = base_src.read(1, window=window)
            cm_model += confusion_matrix(truth, pred, n_classes, ignore_index)
            cm_base += confusion_matrix(truth, base, n_classes, ignore_index)
            kept["truth"].append(_every(truth, top, step))
            kept["pred"].append(_every(pred, top, step))
            kept["base"].append(_every(base, top, step))
            if rgb_bands is not None:
                rgb = np.stack([tile.read_rows(b, top, bottom, t) for b in rgb_bands])
                kept["rgb"].append(_every(rgb, top, step))
    return SceneScore(
        cm_model,
        cm_base,
        np.concatenate(kept["truth"], axis=0),
        np.concatenate(kept["pred"], axis=0),
        np.concatenate(kept["base"], axis=0),
        np.concatenate(kept["rgb"], axis=1) if rgb_bands is not None else None,
    )
