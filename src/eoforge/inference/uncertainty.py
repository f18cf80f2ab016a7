"""Per-pixel uncertainty of a prediction: normalised entropy and margin of the blended softmax,
written beside the class map as a two-band COG and described as the ``uncertainty`` asset of
the prediction's STAC item.

Both bands are uint8, scaled so that 0..254 covers 0..1 (``raster:bands`` ``scale`` = 1/254),
with 255 as nodata where the class map has none: band 1 ``entropy`` (``H(p) / log K``, 1 = all
classes equally likely), band 2 ``margin`` (top probability minus the runner-up, 0 = a tie).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError
from eoforge.inference.cog import CogWriter
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.io.atomic import sha256_file

__all__ = [
    "UNCERTAINTY_BANDS",
    "UNCERTAINTY_SCALE",
    "UncertaintyWriter",
    "add_uncertainty_asset",
    "uncertainty_rows",
]

#: Band names of the uncertainty COG, in order.
UNCERTAINTY_BANDS = ("entropy", "margin")
#: Stored value * scale = uncertainty in 0..1.
UNCERTAINTY_SCALE = 1.0 / 254.0


def uncertainty_rows(
    probs: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """Entropy and margin of class scores ``(K, n, W)`` as uint8 ``(2, n, W)``.

    The scores need not sum to one (a blend of windows sums weighted softmaxes): each pixel is
    normalised first. Pixels with ``valid`` False, or no score at all, are :data:`NODATA_CLASS`.
    """
    if probs.ndim != 3 or valid.shape != probs.shape[1:]:
        raise InputError(
            f"uncertainty_rows: scores must be (K, n, W) with validity (n, W), got {probs.shape} "
            f"and {valid.shape}."
        )
    k = probs.shape[0]
    total = probs.sum(axis=0)
    ok = valid & (total > 0)
    p = probs / np.where(ok, total, 1.0)[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = -plogp.sum(axis=0) / np.log(k) if k > 1 else np.zeros(p.shape[1:], np.float32)
    if k > 1:
        top2 = np.partition(p, k - 2, axis=0)[k - 2 :]
        margin = top2[1] - top2[0]
    else:
        margin = np.ones(p.shape[1:], np.float32)
    out = np.empty((2, *p.shape[1:]), np.uint8)
    for band, value in enumerate((entropy, margin)):
        scaled = np.rint(np.clip(value, 0.0, 1.0) / UNCERTAINTY_SCALE)
        out[band] = np.where(ok, scaled, NODATA_CLASS).astype(np.uint8)
    return out


class UncertaintyWriter(CogWriter):
    """A :class:`~eoforge.inference.cog.CogWriter` of the two uncertainty bands (overviews
    averaged: uncertainty is continuous), taking ``(2, n, W)`` uint8 rows."""

    def __init__(
        self, out_tif: Path, crs: str, transform: Sequence[float], shape: tuple[int, int]
    ) -> None:
        super().__init__(
            out_tif,
            crs,
            transform,
            shape,
            count=len(UNCERTAINTY_BANDS),
            overview_resampling="AVERAGE",
        )


def add_uncertainty_asset(item: dict[str, Any], tif: Path, href: str) -> dict[str, Any]:
    """``item`` (a prediction's STAC item dict) with the ``uncertainty`` asset for ``tif``.

    Args:
        item: from :func:`~eoforge.inference.item.prediction_item`; changed in place.
        tif: the uncertainty COG (read for size and checksum).
        href: its href relative to the item, e.g. ``../uncertainty/<item_id>.tif``.

    Raises:
        InputError: ``tif`` does not exist.
    """
    tif = Path(tif)
    if not tif.is_file():
        raise InputError(f"uncertainty COG '{tif}' does not exist; write it while predicting.")
    extensions = item.setdefault("stac_extensions", [])
    for ext in (
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    ):
        if ext not in extensions:
            extensions.append(ext)
    item.setdefault("assets", {})["uncertainty"] = {
        "href": href,
        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": "Per-pixel uncertainty: normalised entropy and margin of the softmax",
        "roles": ["data", "uncertainty"],
        "raster:bands": [
            {
                "name": name,
                "description": desc,
                "data_type": "uint8",
                "nodata": NODATA_CLASS,
                "scale": UNCERTAINTY_SCALE,
                "offset": 0.0,
            }
            for name, desc in zip(
                UNCERTAINTY_BANDS,
                (
                    "entropy of the class probabilities / log(classes); 1 = uniform",
                    "top class probability minus the second; 0 = a tie",
                ),
                strict=True,
            )
        ],
        "file:size": tif.stat().st_size,
        "file:checksum": "1220" + sha256_file(tif),
    }
    return item
