"""Unsupervised classes (MiniBatchKMeans fitted block by block) and cosine-similarity search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.embeddings.classify import vectors_at
from eoforge.embeddings.field import FieldTile
from eoforge.embeddings.rasters import RowCog
from eoforge.errors import InputError

__all__ = ["cluster_map", "fit_kmeans", "query_vector", "similarity_map"]

NODATA_CLASS = 255


def fit_kmeans(tiles: Sequence[FieldTile], k: int, seed: int = 0, per_block: int = 20000) -> Any:
    """MiniBatchKMeans fitted with ``partial_fit`` on a sample of each block (bounded memory)."""
    from sklearn.cluster import MiniBatchKMeans

    if not 2 <= k < NODATA_CLASS:
        raise InputError(f"k={k} clusters must be in 2..254.")
    rng = np.random.default_rng(seed)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    pending: list[NDArray[np.float32]] = []
    for tile in tiles:
        for _, vec, ok in tile.blocks():
            flat = vec[ok]
            if len(flat) > per_block:
                flat = flat[rng.choice(len(flat), per_block, replace=False)]
            pending.append(flat)
            if sum(len(p) for p in pending) >= max(4096, 3 * k):
                km.partial_fit(np.concatenate(pending))
                pending = []
    if pending and sum(len(p) for p in pending) >= k:
        km.partial_fit(np.concatenate(pending))
    if not hasattr(km, "cluster_centers_"):
        raise InputError(f"the field has fewer than {k} valid pixels to cluster.")
    return km


def cluster_map(km: Any, tile: FieldTile, out_tif: Path) -> str:
    """The cluster of every pixel as a uint8 COG (255 = no data); return sha256."""
    with RowCog(out_tif, tile.grid, dtype="uint8", nodata=NODATA_CLASS, resampling="MODE") as cog:
        for sl, vec, ok in tile.blocks():
            out = np.full(ok.shape, NODATA_CLASS, np.uint8)
            if ok.any():
                out[ok] = km.predict(vec[ok]).astype(np.uint8)
            cog.write(sl, out)
    assert cog.sha256 is not None
    return cog.sha256


def query_vector(tile: FieldTile, geometry: Any) -> NDArray[np.float32]:
    """The unit mean vector of the pixels a point or polygon (in the tile's CRS) covers.

    Raises:
        InputError: the geometry covers no pixel with a vector.
    """
    import shapely
    from rasterio.features import geometry_mask

    geom = shapely.geometry.shape(geometry) if isinstance(geometry, dict) else geometry
    if geom.geom_type == "Point":
        r, c = tile.grid.rowcol(np.array([geom.x]), np.array([geom.y]))
        rows, cols = r, c
    else:
        inside = ~geometry_mask([geom], (tile.grid.height, tile.grid.width),
                                tile.grid.transform, all_touched=True)  # fmt: skip
        rows, cols = np.nonzero(inside)
    vec, ok = vectors_at(tile, rows, cols)
    if not ok.any():
        raise InputError(
            f"the query {geom.wkt[:80]} covers no pixel with an embedding in tile "
            f"'{tile.grid.tile}' (outside the tile, or only clouds); pick another place."
        )
    mean: NDArray[np.float32] = vec[ok].mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def similarity_map(query: NDArray[np.float32], tile: FieldTile, out_tif: Path) -> str:
    """Cosine similarity of every pixel's vector to ``query`` as a float32 COG (NaN = no data)."""
    with RowCog(out_tif, tile.grid, dtype="float32", nodata=float("nan"),
                resampling="AVERAGE") as cog:  # fmt: skip
        for sl, vec, ok in tile.blocks():
            sim = np.where(ok, vec @ query, np.nan).astype(np.float32)
            cog.write(sl, sim)
    assert cog.sha256 is not None
    return cog.sha256
