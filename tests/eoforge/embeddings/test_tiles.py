"""Embedding cubes (a D-channel cube variable loaded through odc-stac) read as embedding tiles,
and KMeans fitted and applied over their dask chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from dask.callbacks import Callback

from eoforge.cube.channels import write_channel_cube
from eoforge.embeddings.tiles import ChannelEmbeddingTile, open_embedding_tiles
from eoforge.embeddings.unsupervised import cluster_map, fit_kmeans
from eoforge.errors import InputError
from eoforge.testing.embeddings import directions, embedding_item

D, SIDE, CHUNK = 8, 192, 64


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three directions: A on the left, B on the right third, C only in the last chunk."""
    dirs = directions(D, 3, seed)
    which = np.zeros((SIDE, SIDE), np.int64)
    which[:, 2 * SIDE // 3 :] = 1
    which[-CHUNK:, -CHUNK:] = 2
    noise = np.random.default_rng(seed).normal(scale=0.03, size=(SIDE, SIDE, D))
    vec = dirs[which] + noise
    vec /= np.linalg.norm(vec, axis=-1, keepdims=True)
    return vec.astype(np.float32), which, dirs


def _cube(tmp_path: Path, values: np.ndarray, nodata: float | None = -128) -> Path:
    item = embedding_item(tmp_path, "e", values, nodata=nodata)
    write_channel_cube([item], "embedding", tmp_path / "cube.zarr", chunk=CHUNK)
    return tmp_path / "cube.zarr"


def test_int8_cube_reads_as_unit_vectors(tmp_path: Path) -> None:
    vec, _, _ = _scene()
    q = np.clip(np.rint(np.moveaxis(vec, -1, 0) * 127), -127, 127).astype(np.int8)
    q[:, 5, 7] = -128
    (tile,) = open_embedding_tiles(_cube(tmp_path, q))
    assert isinstance(tile, ChannelEmbeddingTile) and tile.dims == D
    got, ok = tile.rows(slice(0, SIDE))
    assert not ok[5, 7] and ok.sum() == SIDE * SIDE - 1
    assert np.abs(np.linalg.norm(got[ok], axis=-1) - 1).max() < 1e-5
    assert np.abs(got[ok] - vec[ok]).max() < 2 / 127
    rows, cols = np.array([5, 100, 191, -1]), np.array([7, 3, 191, 0])
    at, ok_at = tile.vectors_at(rows, cols)
    assert ok_at.tolist() == [False, True, True, False]
    np.testing.assert_array_equal(at[1:3], got[rows[1:3], cols[1:3]])
    dvec, dok = tile.dask_vectors()
    np.testing.assert_array_equal(np.asarray(dvec[60:70].compute()), got[60:70])
    np.testing.assert_array_equal(np.asarray(dok.compute()), ok)


def test_float_cube_and_time_slices(tmp_path: Path) -> None:
    vec, _, _ = _scene()
    values = np.moveaxis(vec * 3.0, -1, 0).copy()  # any length: normalised on read
    values[:, 0, :] = np.nan
    items = [
        embedding_item(tmp_path, f"e{y}", values, nodata=float("nan"),
                       datetime=f"{y}-06-01T00:00:00Z") for y in (2023, 2024)
    ]  # fmt: skip
    write_channel_cube(items, "embedding", tmp_path / "two.zarr", chunk=CHUNK)
    with pytest.raises(InputError, match=r"holds 2 slices.*ingest one date"):
        open_embedding_tiles(tmp_path / "two.zarr")
    (latest,) = open_embedding_tiles(tmp_path / "two.zarr", time=-1)
    assert latest.attrs["item_ids"] == ["e2024"]
    got, ok = latest.rows(slice(0, 4))
    assert not ok[0].any() and ok[1:].all()
    np.testing.assert_allclose(got[1:], vec[1:4], atol=1e-5)
    with pytest.raises(InputError, match="outside the 2 slices"):
        open_embedding_tiles(tmp_path / "two.zarr", time=2)


def test_a_band_cube_is_not_an_embedding_store(real_cube: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither an embedding field nor a cube"):
        open_embedding_tiles(real_cube)
    with pytest.raises(InputError, match="is not a Zarr store"):
        open_embedding_tiles(tmp_path / "missing.zarr")


class _LargestResult(Callback):  # type: ignore[misc]
    """Records the largest array any dask task returned (what one task holds in memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.largest = max(self.largest, int(getattr(result, "nbytes", 0)))


def test_kmeans_streams_over_chunks_and_predicts_chunk_by_chunk(tmp_path: Path) -> None:
    vec, which, dirs = _scene()
    (tile,) = open_embedding_tiles(_cube(tmp_path, np.moveaxis(vec, -1, 0).copy(), None))
    with _LargestResult() as seen:
        km = fit_kmeans([tile], 3, seed=0, per_chunk=500)
    # every chunk was seen (C lives only in the last one) and none was bigger than a chunk
    cos = km.cluster_centers_ @ dirs.T / np.linalg.norm(km.cluster_centers_, axis=1)[:, None]
    assert (cos.max(axis=0) > 0.99).all(), cos
    chunk_bytes = CHUNK * CHUNK * D * 4
    assert 0 < seen.largest <= chunk_bytes < vec.nbytes // 4

    with _LargestResult() as seen:
        cluster_map(km, tile, tmp_path / "k.tif")
    with rasterio.open(tmp_path / "k.tif") as src:
        labels = src.read(1)
    np.testing.assert_array_equal(labels, km.predict(vec.reshape(-1, D)).reshape(SIDE, SIDE))
    # the three regions map to three distinct clusters
    assert len({int(labels[which == i][0]) for i in range(3)}) == 3
    assert seen.largest <= chunk_bytes * (SIDE // CHUNK)  # at most one row of chunks
