"""The STAC item of a prediction COG: footprint, projection, classes and file checksum, with
``derived_from`` links to the source scene and the model (ADR 0001).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_geom

from eoforge.errors import InputError
from eoforge.inference.cog import _affine, _parse_crs
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.io.atomic import sha256_file

__all__ = ["prediction_item"]

_CLASS_NAME = re.compile(r"^[0-9A-Za-z_-]+$")  # what the classification extension allows
_COORD_DIGITS = 7  # ~1 cm in lon/lat: stable footprints across GDAL/PROJ builds
_EDGE_POINTS = 8  # points per footprint edge, so the lon/lat polygon follows the curved edge


def _source_href(source_item: dict[str, Any], source_href: str | None) -> str:
    if source_href:
        return source_href
    for rel in ("self", "canonical"):
        for link in source_item.get("links", []):
            if link.get("rel") == rel and link.get("href"):
                return str(link["href"])
    raise InputError(
        f"source item '{source_item.get('id')}' has no 'self' or 'canonical' link; pass "
        "source_href (e.g. from the cube's item_hrefs) so the prediction can link to it."
    )


def _footprint(crs: CRS, transform: Affine, shape: tuple[int, int]) -> dict[str, Any]:
    west, south, east, north = array_bounds(shape[0], shape[1], transform)
    t = np.linspace(0.0, 1.0, _EDGE_POINTS + 1)[:-1]
    ring = (
        [(west + f * (east - west), south) for f in t]
        + [(east, south + f * (north - south)) for f in t]
        + [(east - f * (east - west), north) for f in t]
        + [(west, north - f * (north - south)) for f in t]
    )
    ring.append(ring[0])
    geom = {"type": "Polygon", "coordinates": [ring]}
    geom = dict(transform_geom(crs, "EPSG:4326", geom))
    rings = [
        [[round(float(x), _COORD_DIGITS), round(float(y), _COORD_DIGITS)] for x, y, *_ in r]
        for r in geom["coordinates"]
    ]
    return {"type": "Polygon", "coordinates": rings}


def prediction_item(
    pred_tif: Path,
    source_item: dict[str, Any],
    classes: Sequence[str],
    model_href: str | None,
    crs: str,
    transform: Sequence[float],
    shape: tuple[int, int],
    *,
    source_href: str | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The STAC item of a prediction COG, as a dict ready for :func:`write_json_atomic`.

    The item is ``<source id>-prediction``, with the source's datetime, a lon/lat footprint of
    the raster, the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``), one
    asset ``classification`` (``./<file>.tif``, COG, classification and file extensions) and
    ``derived_from`` links to the source item and, if given, the model's STAC item (as the MLM
    extension recommends for model outputs; told apart by their ``title``).

    Args:
        pred_tif: the written COG (read for ``file:size`` and ``file:checksum``); the item is
            meant to be written beside it.
        source_item: the source scene's STAC item as a dict.
        classes: class names, index = class value.
        model_href: href of the model's STAC item (``model/model-item.json``), or None.
        crs: CRS of the raster, e.g. ``"EPSG:32633"``.
        transform: the raster's affine transform (6 floats, rasterio order).
        shape: (height, width) of the raster.
        source_href: href of the source item; default: its ``self`` (else ``canonical``) link.
        model_name: the model's ``mlm:name``, recorded on the model link when given.

    Returns:
        The item as a JSON-serialisable dict (no self link; asset href relative).

    Raises:
        InputError: missing COG, a source item without id/datetime/href, bad class names,
            CRS or transform.
    """
    tif = Path(pred_tif)
    if not tif.is_file():
        raise InputError(f"prediction COG '{tif}' does not exist; write it with write_prediction.")
    source_id = source_item.get("id")
    if not source_id:
        raise InputError("source item has no 'id'; pass the STAC item the prediction comes from.")
    names = list(classes)
    bad = [n for n in names if not _CLASS_NAME.match(n)]
    if bad or len(set(names)) != len(names) or not 1 <= len(names) < NODATA_CLASS:
        raise InputError(
            f"classes {names} must be 1..254 unique names of letters, digits, '-' or '_' "
            f"(invalid: {bad}); fix labels.classes."
        )
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape {shape!r} of '{tif}' must be (height, width) >= 1.")
    crs_obj = _parse_crs(crs)
    affine = _affine(transform)
    props = source_item.get("properties", {})
    start, end = props.get("start_datetime"), props.get("end_datetime")
    if not props.get("datetime") and not (start and end):
        raise InputError(f"source item '{source_id}' has neither datetime nor start/end_datetime.")

    geometry = _footprint(crs_obj, affine, (int(shape[0]), int(shape[1])))
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    properties: dict[str, Any] = {
        k: props[k] for k in ("platform", "constellation", "instruments") if k in props
    }
    if start and end:
        properties.update(start_datetime=start, end_datetime=end)
    item = pystac.Item(
        id=f"{source_id}-prediction",
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        datetime=pystac.utils.str_to_datetime(props["datetime"]) if props.get("datetime") else None,
        properties=properties,
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs_obj.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.code = None
        proj.wkt2 = crs_obj.to_wkt()
    proj.shape = [int(shape[0]), int(shape[1])]
    proj.transform = [float(v) for v in tuple(affine)[:6]]

    asset = pystac.Asset(
        href=f"./{tif.name}",
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title="Predicted class per pixel",
    )
    item.add_asset("classification", asset)
    ClassificationExtension.ext(asset, add_if_missing=True).classes = [
        *(Classification.create(value=i, name=n) for i, n in enumerate(names)),
        Classification.create(value=NODATA_CLASS, name="nodata", nodata=True),
    ]
    file_ext = FileExtension.ext(asset, add_if_missing=True)
    file_ext.size = tif.stat().st_size
    file_ext.checksum = "1220" + sha256_file(tif)  # multihash: sha2-256, 32 bytes

    item.add_link(
        pystac.Link(
            rel=pystac.RelType.DERIVED_FROM,
            target=_source_href(source_item, source_href),
            media_type=pystac.MediaType.GEOJSON,
            title=f"source scene {source_id}",
        )
    )
    if model_href:
        item.add_link(
            pystac.Link(
                rel=pystac.RelType.DERIVED_FROM,
                target=model_href,
                media_type=pystac.MediaType.GEOJSON,
                title="model",
                extra_fields={"mlm:name": model_name} if model_name else None,
            )
        )
    return item.to_dict(include_self_link=False, transform_hrefs=False)
