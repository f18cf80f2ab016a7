"""Quicklook PNGs and the HTML report of a run.

Every figure is written atomically with fixed settings and no software/time metadata, so the
same inputs give the same bytes. The report references the PNGs by relative path.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
from eoforge.io.redact import redact

__all__ = [
    "CLASS_COLOURS",
    "class_map_png",
    "confusion_png",
    "learning_curves_png",
    "true_colour_png",
    "write_report",
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


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
td.best { font-weight: bold; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(_fmt(value), quote=True)


def _systems(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{"model": {...}, "baseline": {...}}``; a single metrics dict counts as the model."""
    if "miou" in metrics:
        return {"model": metrics}
    return {str(k): v for k, v in metrics.items() if isinstance(v, Mapping)}


def _comparison_table(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    classes: list[str] = []
    for m in systems.values():
        classes += [c for c in m.get("per_class_iou", {}) if c not in classes]
    rows: list[tuple[str, list[Any]]] = [
        ("mIoU", [m.get("miou") for m in systems.values()]),
        ("pixel accuracy", [m.get("pixel_accuracy") for m in systems.values()]),
    ]
    rows += [
        (f"IoU {c}", [m.get("per_class_iou", {}).get(c) for m in systems.values()]) for c in classes
    ]
    out = ["<table class='metrics'><thead><tr><th>metric</th>"]
    out += [f"<th>{_esc(name)}</th>" for name in systems]
    out.append("</tr></thead><tbody>")
    for label, values in rows:
        numbers = [v for v in values if isinstance(v, int | float)]
        best = max(numbers) if len(systems) > 1 and numbers else None
        out.append(f"<tr><td>{_esc(label)}</td>")
        out += [
            f"<td{' class=best' if v is not None and v == best else ''}>{_esc(v)}</td>"
            for v in values
        ]
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _per_class_table(name: str, m: Mapping[str, Any]) -> list[str]:
    keys = ("per_class_iou", "per_class_precision", "per_class_recall", "per_class_f1", "support")
    classes = list(m.get("per_class_iou", {}))
    if not classes:
        return []
    out = [f"<h3>{_esc(name)}: per class</h3><table><thead><tr><th>class</th>"]
    out += [f"<th>{_esc(k.removeprefix('per_class_'))}</th>" for k in keys]
    out.append("</tr></thead><tbody>")
    for c in classes:
        out.append(f"<tr><td>{_esc(c)}</td>")
        out += [f"<td>{_esc(m.get(k, {}).get(c))}</td>" for k in keys]
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    out = ["<table><thead><tr>", *(f"<th>{_esc(c)}</th>" for c in columns), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        out += [f"<td>{_esc(row.get(c))}</td>" for c in columns]
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _relative(path: Path, start: Path) -> str:
    rel = Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()
    return html.escape(quote(rel, safe="/"), quote=True)


def write_report(
    out_html: Path,
    title: str,
    metrics: Mapping[str, Any],
    images: Sequence[tuple[str, Path]],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    links: Mapping[str, str] | None = None,
) -> Path:
    """Write the run report: metrics side by side, figures, extra tables and links.

    Args:
        out_html: destination (``DIR/report.html``); images are referenced relative to it.
        title: page title.
        metrics: ``{system name: metrics dict}`` (e.g. ``{"model": ..., "baseline": ...}``), each
            from :func:`eoforge.training.metrics.metrics_from_confusion`; a single metrics dict is taken
            as the model's. mIoU, pixel accuracy and per-class IoU are shown side by side (best in
            bold), then a per-class table per system.
        images: (caption, PNG path) in display order.
        tables: extra tables, ``{heading: rows}``; columns are the union of the rows' keys.
        links: ``{label: href}`` (e.g. provenance.json, model, predictions), hrefs as given.

    Returns:
        ``out_html``.
    """
    out = Path(out_html)
    systems = _systems(metrics)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if links:
        parts.append("<h2>Outputs</h2><ul class='links'>")
        parts += [
            f"<li><a href='{html.escape(href, quote=True)}'>{html.escape(label)}</a></li>"
            for label, href in links.items()
        ]
        parts.append("</ul>")
    if systems:
        parts.append("<h2>Metrics</h2>")
        parts += _comparison_table(systems)
        for name, m in systems.items():
            parts += _per_class_table(name, m)
    if images:
        parts.append("<h2>Figures</h2>")
        for caption, png in images:
            parts.append(
                f"<figure><img src='{_relative(png, out.parent)}' alt='{html.escape(caption, quote=True)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    for heading, rows in (tables or {}).items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += _table(rows) if rows else ["<p>(none)</p>"]
    parts.append("</body></html>\n")
    with staged_file(out) as tmp:  # no signed URL or credential ever reaches a report
        tmp.write_text(redact("\n".join(parts)), encoding="utf-8")
    return out
