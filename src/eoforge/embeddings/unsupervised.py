"""Unsupervised classes (MiniBatchKMeans fitted and applied over dask chunks of the vectors)
and cosine-similarity search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.embeddings.classify import vectors_at
from eoforge.embeddings.rasters import RowCog
from eoforge.embeddings.tiles import EmbeddingTile
from eoforge.errors import InputError

__all__ = ["cluster_map", "fit_kmeans", "query_vector", "similarity_map"]

NODATA_CLASS = 255


def _chunk_pairs(tile: EmbeddingTile) -> list[tuple[Any, Any]]:
    """(vectors, valid) dask delayed objects, one pair per stored chunk of the tile."""
    vec, ok = tile.dask_vectors()
    vec = vec.rechunk({2: -1})  # whole vectors per chunk
    ok = ok.rechunk(vec.chunks[:2])
    return list(zip(vec.to_delayed()[..., 0].ravel(), ok.to_delayed().ravel(), strict=True))


def fit_kmeans(
    tiles: Sequence[EmbeddingTile], k: int, seed: int = 0, per_chunk: int = 5000,
    chunks_at_once: int = 4,
) -> Any:  # fmt: skip
    """MiniBatchKMeans fitted with ``partial_fit`` over the tiles' dask chunks.

    ``chunks_at_once`` chunks are computed together (dask's threads), at most ``per_chunk``
    valid vectors are drawn from each, and each batch updates the model: memory holds a few
    chunks, never a tile.

    Raises:
        InputError: ``k`` out of range, or fewer valid vectors than ``k``.
    """
    from dask.base import compute
    from sklearn.cluster import MiniBatchKMeans

    if not 2 <= k < NODATA_CLASS:
        raise InputError(f"k={k} clusters must be in 2..254.")
    rng = np.random.default_rng(seed)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    pairs = [p for tile in tiles for p in _chunk_pairs(tile)]
    pending: list[NDArray[np.float32]] = []
    for start in range(0, len(pairs), chunks_at_once):
        batch = compute(*pairs[start : start + chunks_at_once], scheduler="threads")
        for vec, ok in batch:
            flat = vec[ok]
            if len(flat) > per_chunk:
                flat = flat[np.sort(rng.choice(len(flat), per_chunk, replace=False))]
            pending.append(flat)
        if sum(len(p) for p in pending) >= max(4096, 3 * k):
            km.partial_fit(np.concatenate(pending))
            pending = []
    if pending and sum(len(p) for p in pending) >= k:
        km.partial_fit(np.concatenate(pending))
    if not hasattr(km, "cluster_centers_"):
        raise InputError(f"the field has fewer than {k} valid pixels to cluster.")
    return km


def _predict_chunk(km: Any, vec: NDArray[np.float32], ok: NDArray[np.bool_]) -> NDArray[np.uint8]:
    out = np.full(ok.shape, NODATA_CLASS, np.uint8)
    if ok.any():
        out[ok] = km.predict(vec[ok]).astype(np.uint8)
    return out


def cluster_map(km: Any, tile: EmbeddingTile, out_tif: Path) -> str:
    """The cluster of every pixel as a uint8 COG (255 = no data); return sha256.

    Predicted chunk by chunk on dask (``map_blocks``); one row of chunks is computed and
    written at a time.
    """
    import dask.array as da

    vec, ok = tile.dask_vectors()
    vec = vec.rechunk({2: -1})
    ok = ok.rechunk(vec.chunks[:2])
    labels = da.blockwise(
        lambda v, o: _predict_chunk(km, v, o), "yx", vec, "yxd", ok, "yx",
        concatenate=True, dtype=np.uint8,
    )  # fmt: skip
    with RowCog(out_tif, tile.grid, dtype="uint8", nodata=NODATA_CLASS, resampling="MODE") as cog:
        top = 0
        for h in labels.chunks[0]:
            sl = slice(top, top + h)
            cog.write(sl, np.asarray(labels[sl].compute(scheduler="threads")))
            top += h
    assert cog.sha256 is not None
    return cog.sha256


def query_vector(tile: EmbeddingTile, geometry: Any) -> NDArray[np.float32]:
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


def similarity_map(query: NDArray[np.float32], tile: EmbeddingTile, out_tif: Path) -> str:
    """Cosine similarity of every pixel's vector to ``query`` as a float32 COG (NaN = no data)."""
    with RowCog(out_tif, tile.grid, dtype="float32", nodata=float("nan"),
                resampling="AVERAGE") as cog:  # fmt: skip
        for sl, vec, ok in tile.blocks():
            sim = np.where(ok, vec @ query, np.nan).astype(np.float32)
            cog.write(sl, sim)
    assert cog.sha256 is not None
    return cog.sha256
