"""Quicklook PNGs and the HTML report of a run.

Every figure is written atomically with fixed settings and no software/time metadata, so the
same inputs give the same bytes. The page itself is :mod:`eoforge.runs.report_page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from eoforge.errors import InputError
from eoforge.io.atomic import staged_file

__all__ = [
    "CLASS_COLOURS",
    "class_map_png",
    "confusion_png",
    "footprints_png",
    "learning_curves_png",
    "true_colour_png",
    "uncertainty_png",
]

#: Colour of each known class name; other names take matplotlib's tab10 colours in order.
CLASS_COLOURS: dict[str, str] = {
    "vegetation": "#2e8b3a",
    "bare": "#c8a46e",
    "water": "#1f5fbf",
    "cloud": "#e8e8e8",
    "shadow": "#4a4a4a",
    "other": "#b9ad7f",  # background of the shipped polygon labels: not a blue next to water
}
_NODATA_COLOUR = "#000000"
_NODATA = 255
_PNG_METADATA: dict[str, Any] = {"Software": None}  # matplotlib stamps its version otherwise
_DPI = 100


# --------------------------------------------------------------------------- helpers


def _save(fig: Figure, out_png: Path) -> Path:
    out = Path(out_png)
    try:
        with staged_file(out) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, metadata=_PNG_METADATA)
    finally:
        plt.close(fig)
    return out


def _decimate(a: npt.NDArray[Any], max_size: int) -> npt.NDArray[Any]:
    """Every n-th pixel so that no side exceeds ``max_size`` (nearest: keeps class values)."""
    step = max(1, -(-max(a.shape[-2:]) // max_size))
    return a[..., ::step, ::step]


def _class_colours(class_names: Sequence[str]) -> list[str]:
    tab10 = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    colours, spare = [], iter(tab10)
    for name in class_names:
        colour = CLASS_COLOURS.get(name)
        if colour is None:
            rgb = next(spare, (0.5, 0.5, 0.5))
            colour = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgb))
        colours.append(colour)
    return colours


# --------------------------------------------------------------------------- figures


def true_colour_png(
    bands: npt.NDArray[Any],
    out_png: Path,
    *,
    rgb: tuple[int, int, int] = (2, 1, 0),
    nodata: int = 0,
    max_size: int = 1024,
) -> Path:
    """Write a true-colour quicklook, one image pixel per (decimated) scene pixel.

    Each band is stretched between its 2nd and 98th percentile over valid pixels; pixels where
    any of the three bands is nodata are black.

    Args:
        bands: (C, H, W) raw DN.
        out_png: destination.
        rgb: indices of the red, green and blue bands in ``bands`` (default: the
            blue, green, red, nir order of ``StacSpec.bands``).
        nodata: input nodata value.
        max_size: longest side of the PNG; larger scenes are decimated.

    Returns:
        ``out_png``.

    Raises:
        InputError: ``bands`` is not (C, H, W) or ``rgb`` indexes outside it.
    """
    if bands.ndim != 3 or min(bands.shape) < 1:
        raise InputError(
            f"true-colour quicklook '{out_png}': bands must be (C, H, W), got {bands.shape}."
        )
    if not all(0 <= i < bands.shape[0] for i in rgb):
        raise InputError(
            f"true-colour quicklook '{out_png}': rgb={rgb} indexes outside the {bands.shape[0]} bands."
        )
    cube = _decimate(bands[list(rgb)], max_size).astype(np.float32)
    valid = (cube != nodata).all(axis=0)
    image = np.zeros((*cube.shape[1:], 3), np.uint8)
    if valid.any():
        for c in range(3):
            lo, hi = np.percentile(cube[c][valid], [2, 98])
            scaled = np.clip((cube[c] - lo) / max(float(hi - lo), 1e-6), 0, 1)
            image[..., c] = np.round(scaled * 255).astype(np.uint8)
        image[~valid] = 0
    out = Path(out_png)
    with staged_file(out) as tmp:
        plt.imsave(tmp, image, format="png", metadata=_PNG_METADATA)
    return out


def class_map_png(
    classes: npt.NDArray[np.uint8],
    class_names: Sequence[str],
    out_png: Path,
    title: str,
    *,
    max_size: int = 1024,
) -> Path:
    """Write a class map with fixed class colours and a legend (nodata black).

    Args:
        classes: (H, W) class indices, 255 = nodata / ignored.
        class_names: names, index = class value.
        out_png: destination.
        title: figure title.
        max_size: longest side drawn; larger maps are decimated (nearest).

    Returns:
        ``out_png``.

    Raises:
        InputError: ``classes`` is not 2-D or holds values that are neither a class nor 255.
    """
    if classes.ndim != 2 or min(classes.shape) < 1:
        raise InputError(f"class map '{out_png}' must be a (H, W) array, got {classes.shape}.")
    k = len(class_names)
    values = np.unique(classes)
    bad = values[(values >= k) & (values != _NODATA)]
    if bad.size or (values < 0).any():
        raise InputError(
            f"class map '{out_png}' holds values {bad.tolist()} with only {k} class names "
            f"{list(class_names)}; pass the classes the map was made with."
        )
    colours = _class_colours(class_names)
    lut = np.zeros((256, 3), np.uint8)
    for i, colour in enumerate(colours):
        lut[i] = np.round(np.array(to_rgb(colour)) * 255)
    image = lut[_decimate(classes, max_size).astype(np.uint8)]

    h, w = image.shape[:2]
    width_in = 7.0
    fig = plt.figure(figsize=(width_in + 2.0, max(3.0, width_in * h / w) + 0.6))
    ax = fig.add_axes((0.02, 0.04, 0.72, 0.88))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    handles = [
        Patch(facecolor=c, edgecolor="#777777", label=n)
        for n, c in zip(class_names, colours, strict=True)
    ]
    handles.append(Patch(facecolor=_NODATA_COLOUR, edgecolor="#777777", label="nodata / ignored"))
    fig.legend(handles=handles, loc="center right", frameon=False)
    return _save(fig, Path(out_png))


def uncertainty_png(
    scaled: npt.NDArray[np.uint8], out_png: Path, title: str, *, max_size: int = 1024
) -> Path:
    """Write an uncertainty map (band of :mod:`eoforge.inference.uncertainty`: 0..254 = 0..1,
    255 nodata, drawn black) with a colour bar.

    Raises:
        InputError: ``scaled`` is not a 2-D uint8 array.
    """
    if scaled.ndim != 2 or scaled.dtype != np.uint8 or min(scaled.shape) < 1:
        raise InputError(
            f"uncertainty map '{out_png}' must be a (H, W) uint8 array, got {scaled.dtype} "
            f"{scaled.shape}."
        )
    small = _decimate(scaled, max_size)
    values = np.ma.masked_equal(small, _NODATA).astype(np.float32) / 254.0
    h, w = small.shape
    width_in = 7.0
    fig = plt.figure(figsize=(width_in + 2.0, max(3.0, width_in * h / w) + 0.6))
    ax = fig.add_axes((0.02, 0.04, 0.72, 0.88))
    cmap = plt.get_cmap("magma").with_extremes(bad=_NODATA_COLOUR)
    shown = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("normalised entropy (1: all classes equally likely)")
    return _save(fig, Path(out_png))


def _compact(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def confusion_png(
    cm: npt.NDArray[np.integer[Any]], class_names: Sequence[str], out_png: Path, title: str
) -> Path:
    """Write a confusion matrix, colour = share of the true class (row), text = count and share.

    Args:
        cm: (K, K) counts, rows true, columns predicted.
        class_names: K names.
        out_png: destination.
        title: figure title.

    Returns:
        ``out_png``.

    Raises:
        InputError: ``cm`` is not (K, K) for the K names.
    """
    m = np.asarray(cm, np.int64)
    k = len(class_names)
    if m.shape != (k, k):
        raise InputError(
            f"confusion matrix for '{out_png}' has shape {m.shape}, expected ({k}, {k})."
        )
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, np.float64), where=rows > 0)
    side = max(4.0, 0.9 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{_compact(int(m[i, j]))}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    return _save(fig, Path(out_png))


def _series(history: Sequence[Mapping[str, Any]], key: str) -> npt.NDArray[np.float64]:
    return np.array(
        [float(h[key]) if h.get(key) is not None else np.nan for h in history], np.float64
    )


def learning_curves_png(history: Sequence[Mapping[str, Any]], out_png: Path) -> Path:
    """Write the learning curves: losses (left) and validation mIoU (right) per epoch.

    Args:
        history: one dict per epoch with ``epoch`` and any of ``train_loss``, ``val_loss``,
            ``val_miou`` (missing or None values are gaps).
        out_png: destination.

    Returns:
        ``out_png``.

    Raises:
        InputError: ``history`` is empty.
    """
    if not history:
        raise InputError(f"learning curves '{out_png}': the training history is empty.")
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        values = _series(history, key)
        if np.isfinite(values).any():
            loss_ax.plot(epochs, values, style, markersize=3, label=key.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    if loss_ax.lines:
        loss_ax.legend()
    miou = _series(history, "val_miou")
    miou_ax.plot(epochs, miou, "-o", markersize=3, color="tab:green")
    miou_ax.set_xlabel("epoch")
    miou_ax.set_ylabel("mIoU")
    miou_ax.set_title("validation mIoU")
    miou_ax.set_ylim(0, 1)
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out_png))


def footprints_png(
    footprints: Sequence[tuple[str, Sequence[Sequence[float]]]],
    out_png: Path,
    bbox: Sequence[float] | None = None,
) -> Path:
    """Write a small map of the items' footprints (lon/lat) and the search box, if any.

    Args:
        footprints: (label, exterior ring as (lon, lat) pairs) per item; equal rings are drawn
            once, labelled with the number of items sharing them.
        out_png: destination.
        bbox: the search box (west, south, east, north), drawn dashed.

    Returns:
        ``out_png``.

    Raises:
        InputError: no footprint and no box to draw.
    """
    if not footprints and bbox is None:
        raise InputError(f"area map '{out_png}': no item footprint and no search box to draw.")
    rings: dict[tuple[tuple[float, float], ...], list[str]] = {}
    for label, ring in footprints:
        key = tuple((round(float(x), 6), round(float(y), 6)) for x, y, *_ in ring)
        rings.setdefault(key, []).append(label)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    tab10 = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for n, (ring_key, labels) in enumerate(sorted(rings.items(), key=lambda kv: kv[1][0])):
        xy = np.array(ring_key, np.float64)
        colour = tab10[n % len(tab10)]
        ax.fill(xy[:, 0], xy[:, 1], alpha=0.25, color=colour)
        ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1.2)
        label = labels[0] if len(labels) == 1 else f"{len(labels)} items"
        ax.annotate(
            label, xy[:, :2].mean(axis=0), ha="center", va="center", fontsize=8, color="#222"
        )
    if bbox is not None:
        w, s, e, n_ = (float(v) for v in bbox[:4])
        ax.plot([w, e, e, w, w], [s, s, n_, n_, s], "k--", lw=1, label="search box")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title("area of interest")
    fig.tight_layout()
    return _save(fig, Path(out_png))
