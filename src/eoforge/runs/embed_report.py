"""Pictures of an embed run: embedding RGB (3 principal components), cluster map, similarity
map, class map and few-shot curves, each a deterministic PNG, shown in the run report
(:mod:`eoforge.runs.report_page`, section "Embeddings").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.ticker import NullFormatter
from numpy.typing import NDArray
from rasterio.enums import Resampling

from eoforge.io.atomic import staged_file

__all__ = ["fewshot_png", "field_pca_png", "raster_png"]

_MAX = 1024
#: The few-shot methods compared: (key in the curves, label), as the run report names them.
_METHODS = (
    ("embeddings_knn", "kNN on embeddings"),
    ("embeddings_linear", "linear probe on embeddings"),
    ("rf_bands", "random forest on median bands"),
)


def _save(fig: Any, out: Path) -> Path:
    with staged_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


def field_pca_png(field_uri: str, tile: str, out: Path, seed: int = 0) -> Path:
    """The field's first three principal components as RGB (fitted on a pixel sample)."""
    from eoforge.embeddings.tiles import open_embedding_tiles

    ft = next(t for t in open_embedding_tiles(field_uri) if t.grid.tile == tile)
    step = max(1, max(ft.grid.height, ft.grid.width) // _MAX)
    # block by block (blocks start on multiples of step, so every step-th row is kept):
    # memory is one block plus the picture, not the tile
    rows = max(step, (256 // step) * step)
    parts = [(v[::step, ::step], o[::step, ::step]) for _, v, o in ft.blocks(rows)]
    vec = np.concatenate([v for v, _ in parts])
    ok = np.concatenate([o for _, o in parts])
    rng = np.random.default_rng(seed)
    pool = vec[ok]
    fit = pool[rng.choice(len(pool), min(len(pool), 20000), replace=False)]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    pcs = (vec - mean) @ vt[:3].T
    lo, hi = np.percentile(pcs[ok], [2, 98], axis=0)
    rgb = np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
    rgb[~ok] = 1.0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(f"{tile}: embedding PCA (RGB = PC1-3)")
    ax.set_axis_off()
    return _save(fig, out)


def raster_png(
    tif: Path, out: Path, title: str, kind: str, names: Sequence[str] | None = None
) -> Path:
    """A class / cluster map (``kind='classes'``; ``names`` gives class colours and a legend)
    or a similarity map (``'similarity'``)."""
    with rasterio.open(tif) as src:
        step = max(1, max(src.height, src.width) // _MAX)
        # a decimated read (GDAL uses the COG's overviews): never the whole band in memory
        shape = (max(1, src.height // step), max(1, src.width // step))
        data: NDArray[Any] = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    fig, ax = plt.subplots(figsize=(5.6, 5))
    if kind == "similarity":
        finite = data[np.isfinite(data)]
        low = float(np.percentile(finite, 2)) if finite.size else -1.0
        im = ax.imshow(data, cmap="magma", vmin=low, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    elif names:
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        from eoforge.runs.report import CLASS_COLOURS

        colours = [CLASS_COLOURS.get(n, f"C{i}") for i, n in enumerate(names)]
        masked = np.ma.masked_equal(data, 255)
        ax.imshow(masked, cmap=ListedColormap(colours), vmin=-0.5, vmax=len(names) - 0.5,
                  interpolation="nearest")  # fmt: skip
        ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours, names, strict=True)],
                  loc="lower right", fontsize=7)  # fmt: skip
    else:
        masked = np.ma.masked_equal(data, 255)
        im = ax.imshow(masked, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    return _save(fig, out)


def fewshot_png(curves: Mapping[str, Mapping[str, Any]], out: Path, title: str) -> Path:
    """mIoU against points per class, mean +- std over seeds, per method."""
    shots = sorted(int(n) for n in curves)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in _METHODS:
        mean = np.array([curves[str(n)][f"{key}_miou"] for n in shots])
        std = np.array([curves[str(n)][f"{key}_miou_std"] for n in shots])
        ax.errorbar(shots, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(n) for n in shots])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labelled points per class")
    ax.set_ylabel("mIoU (vegetation / bare / water)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)
