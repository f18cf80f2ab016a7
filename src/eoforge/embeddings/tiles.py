"""What the embedding products read: one tile of per-pixel unit vectors, from either store.

- an embedding field (:mod:`eoforge.embeddings.field`, the encoder's int8 + per-pixel scale);
- a cube variable with D channels (:mod:`eoforge.cube.channels`), e.g. a served embedding
  collection loaded through odc-stac: int8 (AlphaEarth-style ``value / 127``, nodata -128) or
  float (NaN no data); each pixel's vector is normalised to unit length on read.

:func:`open_embedding_tiles` opens every tile of either, so classify, clusters and similarity
run on both unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from numpy.typing import NDArray

from eoforge.cube.channels import ChannelTile, channel_variables, open_channel_tile
from eoforge.cube.grid import TileGrid
from eoforge.embeddings.features import row_blocks
from eoforge.errors import InputError

__all__ = ["EMBEDDING_VARIABLE", "ChannelEmbeddingTile", "EmbeddingTile", "decode_vectors",
           "open_embedding_tiles"]  # fmt: skip

#: The cube variable (and collection asset) holding embeddings.
EMBEDDING_VARIABLE = "embedding"
_ROWS = 256


class EmbeddingTile(Protocol):
    """One tile of unit vectors, read by blocks of rows, at points, or lazily with dask."""

    @property
    def path(self) -> str:
        """The store."""
        ...

    @property
    def grid(self) -> TileGrid:
        """Pixel grid of the tile."""
        ...

    @property
    def dims(self) -> int:
        """D."""
        ...

    @property
    def attrs(self) -> dict[str, Any]:
        """``item_ids``, ``encoder_sha256``, ``quantization`` (for the products' STAC items)."""
        ...

    def rows(self, rows: slice) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``(h, w, D)`` vectors and ``(h, w)`` validity of rows ``rows``."""
        ...

    def blocks(
        self, rows: int = _ROWS
    ) -> Iterator[tuple[slice, NDArray[np.float32], NDArray[np.bool_]]]:
        """Every block of ``rows`` rows: (rows, vectors, valid)."""
        ...

    def vectors_at(
        self, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Vectors at pixels (rows, cols) and whether each has one."""
        ...

    def dask_vectors(self) -> tuple[Any, Any]:
        """``(h, w, D)`` float32 vectors and ``(h, w)`` validity as dask arrays (stored chunks)."""
        ...


def decode_vectors(
    raw: NDArray[Any], nodata: float | None
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """``(..., D)`` stored components -> unit vectors and validity (every channel has data and
    the vector is not zero). Any scale (int8 ``value / 127``) cancels in the normalisation."""
    if raw.dtype.kind == "f":
        ok = np.isfinite(raw).all(axis=-1)
        if nodata is not None and np.isfinite(nodata):
            ok &= (raw != nodata).any(axis=-1)
        vec = np.nan_to_num(raw.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        ok = (raw != nodata).all(axis=-1) if nodata is not None else np.ones(raw.shape[:-1], bool)
        vec = raw.astype(np.float32)
    norm = np.linalg.norm(vec, axis=-1)
    ok &= norm > 0
    vec /= np.where(ok, norm, 1.0)[..., None]
    vec[~ok] = 0.0
    return vec, np.asarray(ok)


@dataclass
class ChannelEmbeddingTile:
    """Slice ``t`` of a cube's D-channel embedding variable, as an :class:`EmbeddingTile`."""

    source: ChannelTile = field(repr=False)
    t: int = 0

    @property
    def path(self) -> str:
        """The cube store."""
        return self.source.cube

    @property
    def grid(self) -> TileGrid:
        """Pixel grid of the tile."""
        return self.source.grid

    @property
    def dims(self) -> int:
        """D."""
        return self.source.channels

    @property
    def attrs(self) -> dict[str, Any]:
        """What a field tile's attributes say, for STAC items of the products."""
        return {"item_ids": self.source.item_ids[self.t].split("+"), "encoder_sha256": "",
                "quantization": f"cube variable '{self.source.variable}', unit-normalised"}  # fmt: skip

    def rows(self, rows: slice) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """``(h, w, D)`` vectors and ``(h, w)`` validity of rows ``rows``."""
        raw = self.source.read_rows(rows.start or 0, rows.stop, self.t)
        return decode_vectors(np.moveaxis(raw, 0, -1), self.source.nodata)

    def blocks(
        self, rows: int = _ROWS
    ) -> Iterator[tuple[slice, NDArray[np.float32], NDArray[np.bool_]]]:
        """Every block of ``rows`` rows: (rows, vectors, valid)."""
        for sl in row_blocks(self.grid.height, rows):
            yield (sl, *self.rows(sl))

    def vectors_at(
        self, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Vectors at pixels (rows, cols) and whether each has one (inside, not no data)."""
        r = np.asarray(rows, np.int64).ravel()
        c = np.asarray(cols, np.int64).ravel()
        inside = (r >= 0) & (r < self.grid.height) & (c >= 0) & (c < self.grid.width)
        out = np.zeros((r.size, self.dims), np.float32)
        ok = np.zeros(r.size, bool)
        idx = np.flatnonzero(inside)
        if idx.size:
            arr: Any = self.source.array
            n = idx.size
            raw = np.stack([np.asarray(arr.get_coordinate_selection(
                (np.full(n, self.t), np.full(n, k), r[idx], c[idx]))) for k in range(self.dims)],
                axis=-1)  # fmt: skip
            out[idx], ok[idx] = decode_vectors(raw, self.source.nodata)
        return out, ok

    def dask_vectors(self) -> tuple[Any, Any]:
        """``(h, w, D)`` float32 vectors and ``(h, w)`` validity as dask arrays (stored chunks)."""
        import dask.array as da

        raw = da.moveaxis(da.from_zarr(self.source.array)[self.t], 0, -1)
        nodata = self.source.nodata
        vec = raw.map_blocks(lambda b: decode_vectors(b, nodata)[0], dtype=np.float32)
        ok = raw.map_blocks(lambda b: decode_vectors(b, nodata)[1], drop_axis=2, dtype=bool)
        return vec, ok


def open_embedding_tiles(
    uri: str | Path, variable: str = EMBEDDING_VARIABLE, time: int | None = None
) -> list[EmbeddingTile]:
    """Every tile of an embedding field or of a cube with a D-channel ``variable``.

    A cube tile with several time slices needs ``time`` (an index, e.g. -1 for the latest).

    Raises:
        InputError: ``uri`` is neither, or a slice is ambiguous.
    """
    from eoforge.embeddings.field import list_field_tiles, open_field_tile

    try:
        root = zarr.open_group(str(uri), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise InputError(
            f"'{uri}' is not a Zarr store; pass an embedding field (from 'eoforge embed run') "
            "or an embedding cube (from 'eoforge embed ingest')."
        ) from exc
    if root.attrs.get("eoforge:kind") == "embedding-field":
        return [open_field_tile(uri, t) for t in list_field_tiles(uri)]
    tiles = sorted(root.group_keys())
    if not tiles or not all(variable in channel_variables(uri, t) for t in tiles):
        raise InputError(
            f"'{uri}' is neither an embedding field nor a cube whose tiles hold a multi-band "
            f"'{variable}' variable; ingest an embedding collection with 'eoforge embed ingest'."
        )
    out: list[EmbeddingTile] = []
    for name in tiles:
        source = open_channel_tile(uri, name, variable)
        n = int(source.array.shape[0])
        if time is None and n > 1:
            raise InputError(
                f"cube '{uri}' tile '{name}' holds {n} slices of '{variable}' "
                f"({source.item_ids}); ingest one date ('eoforge embed ingest --datetime 2024') or "
                "pass a time index (open_embedding_tiles(..., time=-1) for the latest)."
            )
        t = 0 if time is None else time
        if not -n <= t < n:
            raise InputError(f"time index {t} is outside the {n} slices of tile '{name}'.")
        out.append(ChannelEmbeddingTile(source, t % n))
    return out
