"""A quicklook sheet of suggested points: for each, a small true-colour crop of its scene around
the point (read window by window from the source assets) beside the predicted classes, with
its rank, predicted class and entropy, so a reviewer sees at a glance what is being asked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from eoforge.io.atomic import staged_file
from eoforge.labelling.scenes import RunScene, asset_href

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["quicklook_sheet", "read_crop"]

_RGB = ("red", "green", "blue")


def read_crop(href: str, lon: float, lat: float, half: int) -> npt.NDArray[Any] | None:
    """``2 * half`` pixels square of band 1 of ``href`` centred on (lon, lat), zero outside."""
    with rasterio.open(href) as src:
        x, y = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True).transform(lon, lat)
        row, col = src.index(x, y)
        window = Window(col - half, row - half, 2 * half, 2 * half)
        return np.asarray(src.read(1, window=window, boundless=True, fill_value=0))


def _true_colour(source: dict[str, Any] | None, lon: float, lat: float, half: int) -> Any:
    if source is None:
        return None
    bands = []
    for key in _RGB:
        href = asset_href(source, key)
        if href is None:
            return None
        crop = read_crop(href, lon, lat, half)
        if crop is None:
            return None
        bands.append(crop.astype(np.float32))
    rgb = np.stack(bands, axis=-1)
    valid = (rgb > 0).all(axis=-1)
    if not valid.any():
        return rgb.astype(np.uint8)
    lo, hi = np.percentile(rgb[valid], [2, 98])
    return np.clip((rgb - lo) / max(float(hi - lo), 1e-6), 0, 1)


def quicklook_sheet(
    scenes: Sequence[RunScene], points: gpd.GeoDataFrame, out_png: Path, half: int = 24
) -> Path:
    """Write the sheet of ``points`` (from :func:`~eoforge.labelling.suggest.suggest_points`).

    Args:
        scenes: the run's scenes (:func:`~eoforge.labelling.scenes.run_scenes`).
        points: the suggested points (EPSG:4326, columns rank, item_id, predicted, entropy).
        out_png: destination.
        half: half the crop side, in pixels of the source scene.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = {s.item_id: s for s in scenes}
    n = len(points)
    cols = min(6, max(n, 1))
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, p) in zip(axes.flat, points.iterrows(), strict=False):
        scene = by_id.get(str(p["item_id"]))
        lon, lat = float(p.geometry.x), float(p.geometry.y)
        image = _true_colour(scene.source if scene else None, lon, lat, half)
        if image is None and scene is not None:  # no source imagery: show the class map
            image = read_crop(str(scene.prediction), lon, lat, half)
        if image is not None:
            ax.imshow(image, interpolation="nearest")
            size = image.shape[0]
            ax.plot([size / 2 - 0.5], [size / 2 - 0.5], marker="+", color="#ff2bd6", ms=14, mew=2)
        ax.set_title(
            f"#{p['rank']} {p['predicted']}\nentropy {float(p['entropy']):.2f}", fontsize=8
        )
    fig.suptitle(f"{n} points to label next (most informative first)", fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    try:
        with staged_file(out) as tmp:
            fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    finally:
        plt.close(fig)
    return out
