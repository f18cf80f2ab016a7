"""Labelled pixels of an embedding field from a label file (points or polygons, the same files
``labels.source`` names), or from the cube's land-cover reference when a run has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.embeddings.classify import vectors_at
from eoforge.embeddings.tiles import EmbeddingTile
from eoforge.errors import InputError

__all__ = ["labelled_vectors"]

#: Pixels drawn at most from one polygon (a big polygon must not outweigh the rest).
PER_POLYGON = 50


def _pixels_of(
    geom: Any, tile: EmbeddingTile, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    g = tile.grid
    if geom.geom_type == "Point":
        return g.rowcol(np.array([geom.x]), np.array([geom.y]))
    from rasterio.features import geometry_mask

    inside = ~geometry_mask([geom], (g.height, g.width), g.transform, all_touched=False)
    rows, cols = np.nonzero(inside)
    if rows.size > PER_POLYGON:
        keep = rng.choice(rows.size, PER_POLYGON, replace=False)
        rows, cols = rows[keep], cols[keep]
    return rows.astype(np.int64), cols.astype(np.int64)


def labelled_vectors(
    path: str | Path, class_column: str, classes: Sequence[str], tiles: Sequence[EmbeddingTile],
    seed: int = 0,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:  # fmt: skip
    """Vectors under every labelled point (or up to 50 pixels per polygon) and their class index.

    Raises:
        InputError: a class value not in ``classes``, or no label lands on a field pixel.
    """
    from eoforge.labels.polygons import read_labels_with_column

    frame = read_labels_with_column(path, class_column)
    names = [str(v) for v in frame[class_column]]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise InputError(
            f"labels '{path}' column '{class_column}' has values {unknown} that are not among "
            f"the classes {list(classes)}; fix the file or labels.classes."
        )
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    xs: list[NDArray[np.float32]] = []
    ys: list[NDArray[np.int64]] = []
    for tile in tiles:
        local = frame.to_crs(tile.grid.crs) if frame.crs is not None else frame
        for geom, name in zip(local.geometry, names, strict=True):
            if geom is None or geom.is_empty:
                continue
            rows, cols = _pixels_of(geom, tile, rng)
            vec, ok = vectors_at(tile, rows, cols)
            xs.append(vec[ok])
            ys.append(np.full(int(ok.sum()), index[name], np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, tiles[0].dims if tiles else 0), np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    if y.size == 0:
        raise InputError(
            f"no label of '{path}' lands on a pixel of the embedding field (outside its tiles, "
            "or only on cloudy pixels); check the file's CRS and area."
        )
    return x, y
