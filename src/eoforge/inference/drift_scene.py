"""The drift profile of a predicted scene (:mod:`eoforge.inference.drift`), read back strip by
strip: its input rows and its class COG, so memory is one strip whatever the scene's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eoforge.errors import InputError
from eoforge.inference.drift import ProfileAccumulator
from eoforge.inference.scene_io import SceneReader

__all__ = ["profile_scene"]


def profile_scene(
    reader: SceneReader,
    tif: Path,
    bands: Sequence[str],
    classes: Sequence[str],
    nodata: float = 0,
    strip: int = 512,
) -> dict[str, Any]:
    """Profile a predicted scene: its input rows and its class COG, strip by strip."""
    import rasterio
    from rasterio.windows import Window

    acc = ProfileAccumulator(bands, classes, nodata)
    _, height, width = reader.shape
    with rasterio.open(tif) as src:
        if (src.height, src.width) != (height, width):
            raise InputError(
                f"prediction '{tif}' is {src.height} x {src.width} px but its scene is "
                f"{height} x {width}; predict the scene again."
            )
        for top in range(0, height, strip):
            bottom = min(top + strip, height)
            rows = reader.read_rows(top, bottom)
            acc.add(rows, src.read(1, window=Window(0, top, width, bottom - top)))
    return acc.profile()
