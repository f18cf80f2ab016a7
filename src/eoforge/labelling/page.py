"""The labelling page of a run: a Leaflet map (shipped with the package, no CDN) with each
scene's true colour, prediction and uncertainty pre-rendered as Web-Mercator PNG overlays, and
the suggested points in order; :mod:`eoforge.labelling.server` serves it and saves the labels.

Overlays are read through a warped VRT at a decimated output shape (GDAL reads overviews), so
memory is bounded by the overlay size, never the scene.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from eoforge.errors import InputError
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.io.atomic import staged_dir
from eoforge.labelling.scenes import RunScene, asset_href

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["build_page", "class_colours"]

_KNOWN = {
    "vegetation": "#2e8b3a",
    "bare": "#c8a46e",
    "water": "#1f5fbf",
    "cloud": "#e8e8e8",
    "shadow": "#4a4a4a",
}
_SPARE = ["#e41a1c", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#377eb8", "#4daf4a", "#999999"]
_STATIC = ("leaflet.js", "leaflet.css", "label.js", "label.css", "LEAFLET-LICENSE")


def class_colours(classes: Sequence[str]) -> list[str]:
    """A colour per class: the report's colours for known names, then a spare palette."""
    spare = iter(_SPARE)
    return [_KNOWN.get(c) or next(spare, "#777777") for c in classes]


def _warped(href: str | Path, max_size: int, band: int = 1) -> tuple[Any, tuple[float, ...]]:
    """Band ``band`` of ``href`` in EPSG:3857, at most ``max_size`` px a side; and its lon/lat
    bounds (south, west, north, east)."""
    with rasterio.open(href) as src, WarpedVRT(src, crs="EPSG:3857") as vrt:
        scale = max(1.0, max(vrt.width, vrt.height) / max_size)
        shape = (max(1, round(vrt.height / scale)), max(1, round(vrt.width / scale)))
        data = vrt.read(band, out_shape=shape, resampling=Resampling.nearest)
        west, south, east, north = transform_bounds("EPSG:3857", "EPSG:4326", *vrt.bounds)
    return data, (south, west, north, east)


def _png(rgba: npt.NDArray[np.uint8], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(out, rgba, format="png", metadata={"Software": None})


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _overlays(scene: RunScene, k: int, folder: Path, max_size: int) -> list[dict[str, Any]]:
    """Render the scene's layers into ``folder``; their entries for the page."""
    import matplotlib

    out: list[dict[str, Any]] = []
    pred, bounds = _warped(scene.prediction, max_size)
    lut = np.zeros((256, 4), np.uint8)
    for value, colour in enumerate(class_colours(scene.classes)):
        lut[value] = (*_hex(colour), 255)
    lut[NODATA_CLASS] = 0
    name = f"scene{k}-prediction.png"
    _png(lut[pred], folder / name)
    out.append({"scene": scene.item_id, "layer": "prediction", "url": name, "bounds": bounds})

    ent, bounds = _warped(scene.uncertainty, max_size, band=1)
    cmap = matplotlib.colormaps["magma"]
    rgba = (np.asarray(cmap(ent / 254.0)) * 255).astype(np.uint8)
    rgba[ent == NODATA_CLASS] = 0
    name = f"scene{k}-uncertainty.png"
    _png(rgba, folder / name)
    out.append({"scene": scene.item_id, "layer": "uncertainty", "url": name, "bounds": bounds})

    hrefs = [asset_href(scene.source, b) for b in ("red", "green", "blue")] if scene.source else []
    if hrefs and all(hrefs):
        bands = [_warped(str(h), max_size)[0].astype(np.float32) for h in hrefs]
        stack = np.stack(bands, axis=-1)
        valid = (stack > 0).all(axis=-1)
        rgba = np.zeros((*stack.shape[:2], 4), np.uint8)
        if valid.any():
            lo, hi = np.percentile(stack[valid], [2, 98])
            rgba[..., :3] = np.clip((stack - lo) / max(float(hi - lo), 1e-6) * 255, 0, 255)
            rgba[..., 3] = np.where(valid, 255, 0)
        name = f"scene{k}-truecolour.png"
        _png(rgba, folder / name)
        out.append({"scene": scene.item_id, "layer": "true colour", "url": name, "bounds": bounds})
    return out


def build_page(
    scenes: Sequence[RunScene],
    points: gpd.GeoDataFrame,
    out_dir: Path,
    *,
    max_size: int = 1024,
) -> Path:
    """Write the labelling page of ``scenes`` and ``points`` into ``out_dir`` (replaced whole).

    Returns:
        The page, ``out_dir/index.html``.

    Raises:
        InputError: no points, or scenes with different class schemas.
    """
    if len(points) == 0:
        raise InputError("no points to label; run `eoforge suggest` with --n >= 1 first.")
    schemas = {s.classes for s in scenes}
    if len(schemas) != 1:
        raise InputError(f"the run's scenes disagree on their classes ({sorted(schemas)}).")
    classes = list(next(iter(schemas)))
    out_dir = Path(out_dir)
    index = out_dir / "index.html"
    if out_dir.exists() and not (index.is_file() and _MARK in index.read_text(errors="replace")):
        raise InputError(
            f"'{out_dir}' exists and is not an eoforge labelling page; pass another folder "
            "(eoforge replaces only the pages it wrote)."
        )
    with staged_dir(out_dir) as staging:
        static = resources.files("eoforge.labelling") / "static"
        for name in _STATIC:
            with resources.as_file(static / name) as path:
                shutil.copyfile(path, staging / name)
        overlays = [o for k, s in enumerate(scenes) for o in _overlays(s, k, staging, max_size)]
        colours = class_colours(classes)
        config = {
            "classes": classes,
            "colours": colours,
            "overlays": overlays,
            "points": [
                {
                    "rank": int(p["rank"]),
                    "lon": float(p.geometry.x),
                    "lat": float(p.geometry.y),
                    "item_id": str(p["item_id"]),
                    "predicted": str(p["predicted"]),
                    "entropy": float(p["entropy"]),
                }
                for _, p in points.sort_values("rank").iterrows()
            ],
        }
        keys = "".join(
            f"<li><kbd>{i + 1}</kbd> <span class='swatch' style='background:{c}'></span>"
            f"{html.escape(n)}</li>"
            for i, (n, c) in enumerate(zip(classes, colours, strict=True))
        )
        page = _TEMPLATE.replace("{{keys}}", keys).replace(
            "{{config}}", json.dumps(config).replace("</", "<\\/")
        )
        (staging / "index.html").write_text(page)
    return out_dir / "index.html"


_MARK = "<title>eoforge: label points</title>"
_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>eoforge: label points</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="leaflet.css"><link rel="stylesheet" href="label.css">
</head><body>
<div id="map"></div>
<aside id="panel">
  <h1>Label the points</h1>
  <p id="progress"></p>
  <p id="current"></p>
  <ul class="keys">{{keys}}</ul>
  <p class="help"><kbd>space</kbd> skip · <kbd>u</kbd> undo · <kbd>s</kbd> save</p>
  <button id="save" type="button">Save labels</button>
  <p id="status" role="status"></p>
</aside>
<script id="config" type="application/json">{{config}}</script>
<script src="leaflet.js"></script><script src="label.js"></script>
</body></html>
"""
