"""Embedding fields: per-pixel unit vectors stored as int8 with a per-pixel scale in Zarr v3.

Layout (one group per cube tile, like the cube, ADR 0013)::

    field.zarr/<tile>/embedding   int8 (D, y, x), chunks (D, 256, 256)
    field.zarr/<tile>/scale       float32 (y, x): vector = embedding * scale; 0 = no data

with ``crs``, ``transform``, ``dims``, ``item_ids`` and the encoder's checksum as attributes.
A per-pixel scale (TESSERA's layout; AlphaEarth uses a fixed one) keeps every component within
half a step of 1/127 of the pixel's largest component. Written block of rows by block of rows
into a staging folder that replaces the target only when every tile is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from eoforge.cube.grid import TileGrid
from eoforge.cube.tiles import CubeTile
from eoforge.embeddings.encoder import PixelEncoder, embed_block
from eoforge.embeddings.features import iter_blocks, row_blocks
from eoforge.errors import ContractViolation, InputError
from eoforge.io.atomic import staged_dir

__all__ = [
    "FieldTile",
    "check_field",
    "dequantize",
    "list_field_tiles",
    "open_field_tile",
    "quantize",
    "write_field",
]

CHUNK = 256
#: Largest tolerated deviation of a stored vector's length from 1 (int8 rounding).
UNIT_TOLERANCE = 0.02


def quantize(vectors: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """``(..., D)`` vectors -> int8 components and a per-vector scale (0 for zero vectors)."""
    peak = np.abs(vectors).max(axis=-1)
    scale = (peak / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0)[..., None]
    q = np.clip(np.rint(vectors / safe), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: NDArray[np.int8], scale: NDArray[np.float32]) -> NDArray[np.float32]:
    """Inverse of :func:`quantize`: ``(..., D)`` float32 vectors."""
    return q.astype(np.float32) * scale[..., None]


@dataclass
class FieldTile:
    """One tile of an embedding field, read by blocks of rows."""

    path: str
    grid: TileGrid
    dims: int
    attrs: dict[str, Any]
    group: zarr.Group

    def rows(self, rows: slice) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``(h, w, D)`` vectors and ``(h, w)`` validity of rows ``rows``."""
        emb = self.group["embedding"]
        scale = self.group["scale"]
        assert isinstance(emb, zarr.Array) and isinstance(scale, zarr.Array)
        q = np.moveaxis(np.asarray(emb[:, rows, :]), 0, -1)
        s = np.asarray(scale[rows, :], dtype=np.float32)
        return dequantize(q, s), s > 0

    def blocks(
        self, rows: int = CHUNK
    ) -> Iterator[tuple[slice, NDArray[np.float32], NDArray[np.bool_]]]:
        """Every block of ``rows`` rows: (rows, vectors, valid)."""
        for sl in row_blocks(self.grid.height, rows):
            yield (sl, *self.rows(sl))

    def vectors_at(
        self, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Vectors at pixels (rows, cols) and whether each has one (inside, not no data)."""
        rows, cols, inside = _inside(self.grid, rows, cols)
        out = np.zeros((rows.size, self.dims), np.float32)
        ok = np.zeros(rows.size, bool)
        emb: Any = self.group["embedding"]
        scale: Any = self.group["scale"]
        idx = np.flatnonzero(inside)
        if idx.size:
            r, c = rows[idx], cols[idx]
            q = np.stack([np.asarray(emb.get_coordinate_selection((np.full(r.size, k), r, c)))
                          for k in range(self.dims)], axis=-1)  # fmt: skip
            s = np.asarray(scale.get_coordinate_selection((r, c)), np.float32)
            out[idx] = q.astype(np.float32) * s[:, None]
            ok[idx] = s > 0
        return out, ok

    def dask_vectors(self) -> tuple[Any, Any]:
        """``(h, w, D)`` float32 vectors and ``(h, w)`` validity as dask arrays over the
        stored chunks (nothing is read until a chunk is computed)."""
        import dask.array as da

        emb = da.from_zarr(self.group["embedding"])
        scale = da.from_zarr(self.group["scale"])
        vec = da.moveaxis(emb, 0, -1).astype(np.float32) * scale[..., None]
        return vec, scale > 0


def _inside(
    grid: TileGrid, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_]]:
    r = np.asarray(rows, np.int64).ravel()
    c = np.asarray(cols, np.int64).ravel()
    return r, c, (r >= 0) & (r < grid.height) & (c >= 0) & (c < grid.width)


def write_field(
    tiles: Sequence[CubeTile],
    model: PixelEncoder,
    out: Path,
    *,
    encoder_sha256: str,
    rows: int = CHUNK,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Embed every pixel of ``tiles`` into the field store ``out``; return per-tile stats.

    Memory holds one block of ``rows`` rows at a time. ``progress(tile, done, total)`` is
    called after each block.
    """
    d = model.config.dims
    stats: dict[str, dict[str, Any]] = {}
    with staged_dir(Path(out)) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({"eoforge:kind": "embedding-field", "dims": d,
                           "encoder_sha256": encoder_sha256})  # fmt: skip
        for tile in tiles:
            g = tile.grid
            group = root.create_group(g.tile)
            group.attrs.update({
                "crs": g.crs, "transform": list(g.transform)[:6], "dims": d,
                "item_ids": tile.item_ids, "encoder_sha256": encoder_sha256,
                "quantization": "vector = embedding * scale (per pixel); scale 0 = no data",
            })  # fmt: skip
            emb = group.create_array("embedding", shape=(d, g.height, g.width), dtype="int8",
                                     chunks=(d, CHUNK, CHUNK), fill_value=0)  # fmt: skip
            scale = group.create_array("scale", shape=(g.height, g.width), dtype="float32",
                                       chunks=(CHUNK, CHUNK), fill_value=0.0)  # fmt: skip
            n_blocks = len(row_blocks(g.height, rows))
            valid = 0
            for i, block in enumerate(iter_blocks(tile, rows)):
                q, s = quantize(embed_block(model, block))
                emb[:, block.rows, :] = np.moveaxis(q, -1, 0)
                scale[block.rows, :] = s
                valid += int((s > 0).sum())
                if progress is not None:
                    progress(g.tile, i + 1, n_blocks)
            stats[g.tile] = {"pixels": g.height * g.width, "valid": valid,
                             "coverage": valid / (g.height * g.width)}  # fmt: skip
    return stats


def list_field_tiles(path: str | Path) -> list[str]:
    """Tile groups of a field store.

    Raises:
        InputError: ``path`` is not an embedding field.
    """
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise InputError(
            f"'{path}' is not an embedding field store; write one with 'eoforge embed field'."
        ) from exc
    if root.attrs.get("eoforge:kind") != "embedding-field":
        raise InputError(f"'{path}' is a Zarr store but not an embedding field (no eoforge:kind).")
    return sorted(root.group_keys())


def open_field_tile(path: str | Path, tile: str) -> FieldTile:
    """Open one tile of a field store (metadata only).

    Raises:
        InputError: no such tile.
    """
    tiles = list_field_tiles(path)
    if tile not in tiles:
        raise InputError(f"tile '{tile}' is not in field '{path}' (it has {tiles}).")
    group = zarr.open_group(str(path), mode="r")[tile]
    assert isinstance(group, zarr.Group)
    attrs = dict(group.attrs)
    emb = group["embedding"]
    assert isinstance(emb, zarr.Array)
    d, h, w = emb.shape
    return FieldTile(str(path), TileGrid.from_attrs(tile, attrs, h, w), int(d), attrs, group)


def check_field(path: str | Path, min_coverage: float = 0.5) -> dict[str, dict[str, float]]:
    """The field contract: finite, unit-length (within int8 rounding), enough coverage.

    Raises:
        ContractViolation: a tile breaks it (the message names the tile and the numbers).
    """
    report: dict[str, dict[str, float]] = {}
    for name in list_field_tiles(path):
        tile = open_field_tile(path, name)
        worst, valid, finite = 0.0, 0, True
        for _, vec, ok in tile.blocks():
            finite &= bool(np.isfinite(vec).all())
            if ok.any():
                norms = np.linalg.norm(vec[ok], axis=-1)
                worst = max(worst, float(np.abs(norms - 1.0).max()))
            valid += int(ok.sum())
        coverage = valid / (tile.grid.height * tile.grid.width)
        report[name] = {"coverage": coverage, "max_unit_error": worst}
        failures: list[dict[str, Any]] = []
        if not finite:
            failures.append({"expectation": "components are finite", "column": name,
                             "kwargs": {}, "offending": "NaN/inf"})  # fmt: skip
        if worst > UNIT_TOLERANCE:
            failures.append({"expectation": "vectors are unit length", "column": name,
                             "kwargs": {"tolerance": UNIT_TOLERANCE},
                             "offending": round(worst, 4)})  # fmt: skip
        if coverage < min_coverage:
            failures.append({"expectation": "coverage of pixels with a vector", "column": name,
                             "kwargs": {"min": min_coverage},
                             "offending": round(coverage, 4)})  # fmt: skip
        if failures:
            raise ContractViolation(f"embedding field {path}", failures)
    return report
