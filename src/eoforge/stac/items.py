"""Item-level STAC helpers: validate an item, read its tile, EPSG code, footprint and self link.

Pure functions over item dicts (as loaded from a catalog file or an API answer); no I/O. A
malformed item is an :class:`~eoforge.errors.InputError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from eoforge.errors import InputError

__all__ = [
    "crosses_antimeridian",
    "item_epsg",
    "item_tile",
    "self_href",
    "validate_item",
]

# Item ids become file names (prepared catalogs, predictions): no separators, no leading dot.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


def item_tile(item: dict[str, Any]) -> str:
    """Tile of an item: the MGRS tile (``33TWL``) from ``grid:code`` or the ``mgrs:*`` fields,
    another ``grid:code`` as it is (e.g. ``WRS2-190028``), or the Landsat WRS-2 path/row from
    ``landsat:wrs_path`` / ``landsat:wrs_row`` (``WRS2-190028``).

    Raises:
        InputError: the item carries none of them.
    """
    props = item.get("properties", {})
    code = props.get("grid:code")
    if isinstance(code, str) and code.startswith("MGRS-"):
        return code.removeprefix("MGRS-")
    zone, band, square = (
        props.get("mgrs:utm_zone"),
        props.get("mgrs:latitude_band"),
        props.get("mgrs:grid_square"),
    )
    if zone is not None and band and square:
        return f"{int(zone):02d}{band}{square}"
    if isinstance(code, str) and _SAFE_ID.match(code):
        return code
    path, row = props.get("landsat:wrs_path"), props.get("landsat:wrs_row")
    if path is not None and row is not None:
        return f"WRS2-{int(path):03d}{int(row):03d}"
    raise InputError(
        f"STAC item '{item.get('id')}' has no 'grid:code', 'mgrs:*' nor 'landsat:wrs_*' "
        "properties, so its tile is unknown; use items of a tiled collection (e.g. Sentinel-2 "
        "L2A, Landsat Collection 2)."
    )


def item_epsg(item: Mapping[str, Any], asset: str | None = None) -> int | None:
    """EPSG code of an item (or of one of its assets) from ``proj:epsg`` / ``proj:code``."""
    sources: list[Mapping[str, Any]] = []
    if asset is not None:
        sources.append(item.get("assets", {}).get(asset, {}))
    sources.append(item.get("properties", {}))
    for src in sources:
        epsg = src.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return epsg
        code = src.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            try:
                return int(code.split(":", 1)[1])
            except ValueError:
                return None
    return None


def crosses_antimeridian(item: Mapping[str, Any]) -> bool:
    """Whether an item's footprint crosses the antimeridian (180° longitude).

    True when its bbox has west > east (the STAC convention for such boxes) or spans more
    than 180° of longitude, or its geometry's longitudes do.
    """
    bbox = item.get("bbox")
    if isinstance(bbox, list | tuple) and len(bbox) in (4, 6):
        west, east = float(bbox[0]), float(bbox[len(bbox) // 2])
        if west > east or east - west > 180:
            return True
    lons: list[float] = []

    def walk(coords: Any) -> None:
        if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
            lons.append(float(coords[0]))
        elif isinstance(coords, list | tuple):
            for c in coords:
                walk(c)

    geometry = item.get("geometry")
    if isinstance(geometry, Mapping):
        walk(geometry.get("coordinates"))
    return bool(lons) and max(lons) - min(lons) > 180


def validate_item(item: Any, where: str) -> dict[str, Any]:
    """Check that ``item`` is a usable STAC Item; return it.

    Raises:
        InputError: not a JSON object, not ``type: Feature``, no safe ``id``, no ``properties``
            with a ``datetime``, ``assets`` that are not objects with string hrefs, or a footprint
            crossing the antimeridian.
    """
    if not isinstance(item, dict):
        raise InputError(
            f"{where} is not a STAC Item: expected a JSON object, got {type(item).__name__}."
        )
    item_id = item.get("id")
    if item.get("type") != "Feature" or not isinstance(item_id, str):
        raise InputError(
            f'{where} is not a STAC Item (needs "type": "Feature" and a string "id"); '
            "fix or remove it."
        )
    if not _SAFE_ID.match(item_id):
        raise InputError(
            f"STAC item id {item_id!r} in {where} is not safe to use as a file name (letters, "
            "digits and ._+- only, not starting with a dot); fix the id."
        )
    props = item.get("properties")
    if not isinstance(props, dict) or not (props.get("datetime") or props.get("start_datetime")):
        raise InputError(
            f"STAC item '{item_id}' in {where} has no properties.datetime; fix the item."
        )
    assets = item.get("assets")
    if not isinstance(assets, dict):
        raise InputError(f"STAC item '{item_id}' in {where} has no \"assets\" object.")
    for key, asset in assets.items():
        if (
            not isinstance(asset, dict)
            or not isinstance(asset.get("href"), str)
            or not asset["href"]
        ):
            raise InputError(
                f"asset '{key}' of STAC item '{item_id}' in {where} has no href; fix the item."
            )
    if crosses_antimeridian(item):
        raise InputError(
            f"STAC item '{item_id}' in {where} crosses the antimeridian (bbox {item.get('bbox')}); "
            "eoforge cannot place such a scene on one lon/lat footprint. Exclude it (narrow "
            "stac.bbox) or split the catalog's item at 180°."
        )
    return item


def self_href(item: dict[str, Any]) -> str | None:
    """The item's ``self`` link href, if any."""
    for lk in item.get("links", []):
        if lk.get("rel") == "self":
            return str(lk["href"])
    return None
