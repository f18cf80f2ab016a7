"""Scenes for inference benchmarks that need no files: a large scene tiled from a real one,
and a writer that drops the class rows (only the prediction's speed is measured)."""

from __future__ import annotations

import numpy as np


class TiledScene:
    """A virtual scene of any size, tiled from a real one; rows are made only when read."""

    def __init__(self, tile: np.ndarray, height: int, width: int) -> None:
        self.tile = tile
        self._shape = (tile.shape[0], height, width)
        self._cols = np.arange(width) % tile.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def read_rows(self, top: int, bottom: int) -> np.ndarray:
        rows = np.arange(top, bottom) % self.tile.shape[1]
        return self.tile[:, rows][:, :, self._cols]


class NullWriter:
    """A prediction writer that keeps nothing."""

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        pass
