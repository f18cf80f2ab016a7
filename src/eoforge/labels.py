"""Labels: Sen2Cor SCL codes grouped into the model's classes (see :class:`LabelSpec`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from eoforge.config import LabelSpec

__all__ = ["scl_lookup", "scl_to_classes"]


def scl_lookup(spec: LabelSpec) -> NDArray[np.uint8]:
    """A 256-entry table mapping each SCL code to a class index (``ignore_index`` if unmapped)."""
    lut = np.full(256, spec.ignore_index, dtype=np.uint8)
    for idx, name in enumerate(spec.classes):
        for code in spec.scl_groups.get(name, ()):
            lut[code] = idx
    return lut


def scl_to_classes(scl: NDArray[np.integer], spec: LabelSpec) -> NDArray[np.uint8]:
    """Map an SCL raster (any shape, uint8 codes) to class indices; unmapped codes -> ignore."""
    return scl_lookup(spec)[np.asarray(scl, dtype=np.uint8)]
