"""One set of units for every item: ``raster:bands`` scale/offset harmonisation.

Sentinel-2 L2A from processing baseline 04.00 (January 2022) adds 1000 to every reflectance
value (BOA_ADD_OFFSET; ``offset: -0.1`` with ``scale: 0.0001``); older items have no offset.
Mixing them feeds a model two meanings of one number. The cube stores integers of one declared
encoding (reflectance = value * scale + offset, ``cube.scale`` / ``cube.offset``; by default
reflectance x 10000, as Google's "harmonized" collection): each item's values are converted
from its own encoding, and a variable whose records declare none (a class raster) is left as
served.

An item's encoding is what its ``raster:bands`` declare, with one correction that real
catalogs need: Earth Search's ``sentinel-2-l2a`` declares ``offset: -0.1`` also on items whose
COGs already had the offset removed (``earthsearch:boa_offset_applied: true``); their pixels
are reflectance x 10000, so their offset is taken as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Encoding", "convert", "item_encoding", "slice_encoding"]

#: (scale, offset) of one variable in one item.
Encoding = tuple[float, float]


def item_encoding(item: Mapping[str, Any], asset: str) -> Encoding | None:
    """The (scale, offset) an item's ``raster:bands`` declare for ``asset``, or None."""
    bands = item.get("assets", {}).get(asset, {}).get("raster:bands") or []
    if not bands or not isinstance(bands[0], Mapping):
        return None
    scale, offset = bands[0].get("scale"), bands[0].get("offset")
    if scale is None and offset is None:
        return None
    if item.get("properties", {}).get("earthsearch:boa_offset_applied") is True:
        offset = 0.0
    return (float(scale if scale is not None else 1.0), float(offset or 0.0))


def slice_encoding(items: Sequence[Mapping[str, Any]], asset: str) -> Encoding | None:
    """The encoding of a time slice (items of one solar day of one tile). They must agree.

    Raises:
        ValueError: the items of one slice declare different encodings.
    """
    found = {item_encoding(it, asset) for it in items}
    found.discard(None)
    if len(found) > 1:
        raise ValueError(f"items {[it.get('id') for it in items]} of one day disagree: {found}")
    return found.pop() if found else None


def convert(
    values: NDArray[Any], source: Encoding | None, target: Encoding, nodata: float
) -> NDArray[Any]:
    """``values`` (integers in ``source``) in the ``target`` encoding, nodata kept.

    Valid values land in ``[1, dtype max]`` so that none becomes nodata (0) by rounding.
    """
    if source is None or np.allclose(source, target, rtol=0, atol=1e-12):
        return values
    scale, offset = source
    t_scale, t_offset = target
    out = (values.astype(np.float64) * scale + offset - t_offset) / t_scale
    info = np.iinfo(values.dtype) if np.issubdtype(values.dtype, np.integer) else None
    if info is not None:
        out = np.clip(np.rint(out), max(info.min, 1), info.max)
    result: NDArray[Any] = np.where(values == nodata, values, out.astype(values.dtype))
    return result
