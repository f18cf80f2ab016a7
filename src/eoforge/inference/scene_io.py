"""Where a scene's rows come from and where its class rows go: the reader and writer protocols
of :func:`eoforge.inference.predict.predict_raster`, with readers for arrays and rasterio datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError

__all__ = [
    "NODATA_CLASS",
    "ArrayReader",
    "ChunkRowReader",
    "PredictionWriter",
    "RasterioReader",
    "SceneReader",
]

#: Class value of pixels without a prediction (input nodata), in the COG and the STAC item.
NODATA_CLASS = 255


class SceneReader(Protocol):
    """A scene that can be read strip by strip: what :func:`predict_raster` consumes."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width) of the scene."""
        ...

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of every band: ``(bands, bottom - top, width)`` raw DN."""
        ...


class PredictionWriter(Protocol):
    """A sink for finished class rows: what :func:`predict_raster` writes to."""

    def write_rows(self, top: int, rows: npt.NDArray[np.uint8]) -> None:
        """Store class rows ``[top, top + len(rows))``; rows arrive in order, exactly once."""
        ...


class ArrayReader:
    """Reads strips of an array-like scene: numpy, zarr, dask or xarray, lazily.

    Args:
        bands: a ``(C, H, W)`` array-like, or a sequence of ``C`` ``(H, W)`` array-likes (e.g.
            ``[ds[b].isel(time=t) for b in bands]`` of a lazily opened cube). Only the rows
            asked for are read (``np.asarray(a[top:bottom])``).
    """

    def __init__(self, bands: Any) -> None:
        if isinstance(bands, (list, tuple)):
            self._bands: list[Any] | None = list(bands)
            self._array: Any = None
            shapes = {tuple(int(d) for d in b.shape) for b in self._bands}
            if not self._bands or len(shapes) != 1 or len(next(iter(shapes))) != 2:
                raise InputError(
                    f"ArrayReader needs C >= 1 bands of one (H, W) shape, got shapes {shapes}."
                )
            h, w = next(iter(shapes))
            self._shape = (len(self._bands), h, w)
        else:
            self._bands = None
            self._array = bands
            shape = tuple(int(d) for d in getattr(bands, "shape", ()))
            if len(shape) != 3 or min(shape) < 1:
                raise InputError(
                    f"ArrayReader needs a non-empty (C, H, W) array, got shape {shape}."
                )
            self._shape = (shape[0], shape[1], shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width)."""
        return self._shape

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of every band."""
        if self._bands is not None:
            return np.stack([np.asarray(b[top:bottom]) for b in self._bands])
        return np.asarray(self._array[:, top:bottom])


class RasterioReader:
    """Reads strips of a raster file (GeoTIFF / COG, local or ``/vsis3/``) opened with rasterio.

    Args:
        dataset: an open rasterio dataset (the caller owns and closes it).
        indexes: 1-based band indexes in model band order (None: every band in file order).
    """

    def __init__(self, dataset: Any, indexes: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indexes = list(indexes) if indexes is not None else list(dataset.indexes)
        bad = [i for i in self.indexes if not 1 <= i <= dataset.count]
        if bad or not self.indexes:
            raise InputError(
                f"band indexes {self.indexes} do not fit '{dataset.name}' with {dataset.count} "
                "band(s); pass 1-based indexes in the model's band order."
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width)."""
        return (len(self.indexes), int(self.dataset.height), int(self.dataset.width))

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of the selected bands."""
        from rasterio.windows import Window  # rasterio only where files are read

        window = Window(0, top, self.dataset.width, bottom - top)
        return np.asarray(self.dataset.read(self.indexes, window=window))


class ChunkRowReader:
    """Reads strips of one time slice of chunked ``(time, y, x)`` arrays (a Zarr cube), each
    chunk row decoded once.

    :func:`~eoforge.inference.predict.predict_raster` asks for the rows it has not read yet, a
    window step at a time; a reader that slices the arrays directly decodes every chunk row a
    request touches again for each request (with 2048-row chunks and 448-row steps, ~4.6
    times). This one keeps the last ``keep`` decoded chunk rows (one is enough for requests
    that only move down): memory is bounded by ``keep`` + 1 chunk rows x the width x the bands,
    never by the scene's height.

    Args:
        arrays: one ``(time, y, x)`` array per model band (e.g. ``zarr.Array``), equal shapes
            and chunk heights.
        t: the time slice.
        keep: decoded chunk rows kept between requests.
    """

    def __init__(self, arrays: Sequence[Any], t: int, keep: int = 1) -> None:
        shapes = {tuple(int(d) for d in a.shape) for a in arrays}
        if not arrays or len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise InputError(
                f"ChunkRowReader needs (time, y, x) arrays of one shape, got {shapes}."
            )
        n_time, height, width = next(iter(shapes))
        if not 0 <= t < n_time:
            raise InputError(f"time slice {t} is not in 0..{n_time - 1}.")
        self.arrays, self.t, self.keep = list(arrays), t, max(1, keep)
        self.step = int(getattr(arrays[0], "chunks", (1, 1024))[1])
        self._shape = (len(arrays), height, width)
        self._cache: dict[int, npt.NDArray[Any]] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width)."""
        return self._shape

    def _chunk_row(self, k: int) -> npt.NDArray[Any]:
        if k not in self._cache:
            while len(self._cache) >= self.keep:  # a caller's view keeps one it still needs
                del self._cache[min(self._cache)]
            y0 = k * self.step
            rows: npt.NDArray[Any] | None = None
            for b, array in enumerate(self.arrays):  # band by band into one buffer: no stack
                band = np.asarray(array[self.t, y0 : y0 + self.step, :])
                if rows is None:  # the dtype np.stack would give
                    dtype = np.result_type(*(getattr(a, "dtype", band.dtype) for a in self.arrays))
                    rows = np.empty((len(self.arrays), *band.shape), dtype)
                rows[b] = band
                del band
            assert rows is not None
            self._cache[k] = rows
        return self._cache[k]

    def read_rows(self, top: int, bottom: int) -> npt.NDArray[Any]:
        """Rows ``[top, bottom)`` of every band."""
        first, last = top // self.step, (bottom - 1) // self.step
        parts = []
        for k in range(first, last + 1):
            y0 = k * self.step
            parts.append(self._chunk_row(k)[:, max(top - y0, 0) : min(bottom - y0, self.step)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


class _ArrayWriter:
    """Collects class rows into an in-memory map (what :func:`predict_scene` returns)."""

    def __init__(self, height: int, width: int) -> None:
        self.out = np.full((height, width), NODATA_CLASS, np.uint8)

    def write_rows(self, top: int, rows: npt.NDArray[np.uint8]) -> None:
        self.out[top : top + len(rows)] = rows
