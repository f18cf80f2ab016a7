"""A native-resolution Sentinel-2 L2A catalog generated from the bundled 120 m records.

Earth Search serves 10 m bands of 10980 x 10980 px and a 20 m SCL of 5490 x 5490 px per MGRS
tile. The bundled sample keeps each item's record exactly as served (``original.json``) but
ships 120 m pixels. :func:`write_native_catalog` writes COGs at the size those records promise
(the 120 m pixels repeated onto the 10 m / 20 m grid: no new information, the real grid size),
optionally cropped to a window, and the records re-pointed at them: real ``raster:bands``
scale/offset, ``proj:`` metadata describing the files, footprints of what was written.

It can also fabricate variants of a real item as other processing baselines serve it (before
04.00 without a BOA offset; from 04.00 with the +1000 offset not applied), to test that items
of every baseline agree in the cube.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LANDSAT_ASSETS",
    "NATIVE_ASSETS",
    "VARIANTS",
    "NativeCatalog",
    "write_landsat_catalog",
    "write_native_catalog",
]

#: Asset key -> (file in the bundled item folder, native pixel size in metres).
NATIVE_ASSETS: dict[str, tuple[str, float]] = {
    "blue": ("B02.tif", 10.0),
    "green": ("B03.tif", 10.0),
    "red": ("B04.tif", 10.0),
    "nir": ("B08.tif", 10.0),
    "scl": ("SCL.tif", 20.0),
}


@dataclass(frozen=True)
class NativeCatalog:
    """What :func:`write_native_catalog` wrote."""

    path: Path
    """The static catalog folder (``collection.json`` + one folder per item)."""
    item_ids: list[str]
    pixels: int
    """Pixels written per 10 m band and item."""


def _window_bounds(
    transform: Any, width: int, height: int, window: tuple[int, int, int, int] | None, res: float
) -> tuple[float, float, float, float]:
    """(west, south, east, north) in the item's CRS of the 10 m window, inside the source."""
    west, north = transform.c, transform.f
    east, south = west + transform.a * width, north + transform.e * height
    if window is None:
        return west, south, east, north
    # Snapped to whole source pixels, so that every band covers exactly the same ground.
    step = abs(transform.a)
    col, row, w, h = (int(v * res // step * step) for v in window)
    x0, y1 = west + col, north - row
    return x0, max(south, y1 - h), min(east, x0 + w), y1


def _native_pixels(source: Path, bounds: tuple[float, float, float, float], res: float) -> Any:
    """The source raster's pixels inside ``bounds``, repeated onto a ``res`` grid."""
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(source) as src:
        factor = round(src.transform.a / res)
        win = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(1, window=win)
        nodata = src.nodata if src.nodata is not None else 0
    native = np.repeat(np.repeat(data, factor, axis=0), factor, axis=1)
    width = round((bounds[2] - bounds[0]) / res)
    height = round((bounds[3] - bounds[1]) / res)
    return native[:height, :width], nodata


def _write_cog(path: Path, data: Any, crs: str, west: float, north: float, res: float) -> None:
    import rasterio
    from rasterio.transform import from_origin

    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": from_origin(west, north, res, res),
        "nodata": 0,
        "compress": "DEFLATE",
        "predictor": 2,
        "blocksize": 512,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _footprint(
    bounds: tuple[float, float, float, float], crs: str
) -> tuple[dict[str, Any], list[float]]:
    """The lon/lat geometry and bbox of ``bounds`` in ``crs``."""
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    geom: dict[str, Any] = dict(transform_geom(crs, "EPSG:4326", mapping(box(*bounds))))
    xs = [c[0] for c in geom["coordinates"][0]]
    ys = [c[1] for c in geom["coordinates"][0]]
    return geom, [min(xs), min(ys), max(xs), max(ys)]


def _asset_path(record: dict[str, Any], key: str) -> Path:
    """The local file an asset's ``file://`` href names."""
    from urllib.parse import unquote, urlsplit

    return Path(unquote(urlsplit(record["assets"][key]["href"]).path))


def _native_item(
    folder: Path, out: Path, window: tuple[int, int, int, int] | None
) -> tuple[dict[str, Any], int]:
    import rasterio

    item_id = folder.name
    record: dict[str, Any] = json.loads((folder / "original.json").read_text())
    with rasterio.open(folder / NATIVE_ASSETS["blue"][0]) as ref:
        crs = str(ref.crs)
        bounds = _window_bounds(ref.transform, ref.width, ref.height, window, 10.0)
    item_dir = out / item_id
    item_dir.mkdir(parents=True, exist_ok=True)
    assets: dict[str, Any] = {}
    pixels = 0
    for key, (name, res) in NATIVE_ASSETS.items():
        data, _ = _native_pixels(folder / name, bounds, res)
        path = item_dir / name
        _write_cog(path, data, crs, bounds[0], bounds[3], res)
        asset = copy.deepcopy(record["assets"][key])
        asset["href"] = path.resolve().as_uri()
        asset["proj:shape"] = [int(data.shape[0]), int(data.shape[1])]
        asset["proj:transform"] = [res, 0.0, bounds[0], 0.0, -res, bounds[3]]
        assets[key] = asset
        if res == 10.0:
            pixels = int(data.size)
    geometry, bbox = _footprint(bounds, crs)
    record.update(geometry=geometry, bbox=bbox, assets=assets)
    record["links"] = [ln for ln in record.get("links", []) if ln.get("rel") != "self"]
    return record, pixels


#: Fabricated variants of a real item: id suffix -> (processing baseline, value shift, declared
#: raster:bands offset, earthsearch:boa_offset_applied). The bundled pixels are reflectance x 1e4
#: (Earth Search applied the BOA offset: ``boa_offset_applied: true``).
VARIANTS: dict[str, tuple[str, int, float, bool | None]] = {
    # before 04.00: no BOA offset existed; the same numbers mean the same reflectance
    "PB0301": ("03.01", 0, 0.0, None),
    # 04.00 and later as ESA delivers it, offset not applied: every valid value 1000 higher
    "RAW": ("05.09", 1000, -0.1, False),
}


def _variant(record: dict[str, Any], out: Path, datetime: str, kind: str) -> dict[str, Any]:
    """A copy of ``record`` as another processing baseline would have served it (:data:`VARIANTS`)."""
    import rasterio

    baseline, shift, offset, applied = VARIANTS[kind]
    old = copy.deepcopy(record)
    old["id"] = f"{record['id']}_{kind}"
    old["properties"].update(
        {"datetime": datetime, "s2:processing_baseline": baseline, "updated": datetime}
    )
    old["properties"].pop("earthsearch:boa_offset_applied", None)
    if applied is not None:
        old["properties"]["earthsearch:boa_offset_applied"] = applied
    item_dir = out / old["id"]
    item_dir.mkdir(parents=True, exist_ok=True)
    for key, (name, res) in NATIVE_ASSETS.items():
        src_path = _asset_path(record, key)
        with rasterio.open(src_path) as src:
            data = src.read(1)
            west, north = src.transform.c, src.transform.f
            crs = str(src.crs)
        bands = old["assets"][key].get("raster:bands") or [{}]
        if "offset" in bands[0]:
            data = np.where(data > 0, np.clip(data.astype(np.int64) + shift, 1, 65535), 0)
            data = data.astype(np.uint16)
            bands[0]["offset"] = offset
        _write_cog(item_dir / name, data, crs, west, north, res)
        old["assets"][key]["href"] = (item_dir / name).resolve().as_uri()
    return old


def _reprojected(record: dict[str, Any], out: Path, epsg: int, tile: str) -> dict[str, Any]:
    """A copy of ``record`` as the neighbouring UTM zone's tile would serve the same ground:
    every asset warped (nearest) onto a grid of ``EPSG:epsg`` at its own resolution."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    new = copy.deepcopy(record)
    new["id"] = f"{record['id']}_{tile}"
    new["properties"].update({"grid:code": f"MGRS-{tile}", "proj:epsg": epsg})
    for key in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"):
        new["properties"].pop(key, None)
    item_dir = out / new["id"]
    item_dir.mkdir(parents=True, exist_ok=True)
    dst_crs = f"EPSG:{epsg}"
    for key, (name, res) in NATIVE_ASSETS.items():
        src_path = _asset_path(record, key)
        with rasterio.open(src_path) as src:
            transform, width, height = calculate_default_transform(
                src.crs, dst_crs, src.width, src.height, *src.bounds, resolution=res
            )
            data = np.zeros((height, width), src.dtypes[0])
            reproject(
                rasterio.band(src, 1),
                data,
                dst_transform=transform,
                dst_crs=dst_crs,
                resampling=Resampling.nearest,
                src_nodata=0,
                dst_nodata=0,
            )
        _write_cog(item_dir / name, data, dst_crs, transform.c, transform.f, res)
        asset = new["assets"][key]
        asset["href"] = (item_dir / name).resolve().as_uri()
        asset["proj:shape"] = [int(height), int(width)]
        asset["proj:transform"] = [res, 0.0, transform.c, 0.0, -res, transform.f]
        asset.pop("proj:epsg", None)
    return new


def write_native_catalog(
    source: Path,
    out: Path,
    items: Sequence[str] | None = None,
    window: tuple[int, int, int, int] | None = None,
    variants: dict[str, dict[str, str]] | None = None,
    neighbours: dict[str, tuple[int, str]] | None = None,
) -> NativeCatalog:
    """Write a static catalog of native-resolution items from a bundled catalog.

    Args:
        source: a bundled catalog folder (``src/eoforge/stac/sample/s2-l2a-mini`` (:data:`eoforge.config.BUNDLED_CATALOG`) or
            ``../shared/data/s2-l2a-sample``), each item folder with ``original.json``.
        out: the folder to write (``collection.json`` + one folder per item).
        items: the item ids to write (default: all).
        window: ``(col, row, width, height)`` in 10 m pixels from the source rasters' origin
            (default: their whole extent; 10980 px for the full sample), snapped to whole
            source pixels.
        variants: item id -> {variant: datetime}: also write that item as another processing
            baseline serves it (:data:`VARIANTS`: ``PB0301`` before the BOA offset, ``RAW``
            with the offset not applied), at that datetime.
        neighbours: item id -> (EPSG, tile): also write that item as the neighbouring UTM
            zone's tile ``tile`` would serve the same ground (warped onto ``EPSG``).

    Returns:
        The catalog folder, the ids written and the 10 m pixels per band.
    """
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    collection = json.loads((source / "collection.json").read_text())
    collection["links"] = [ln for ln in collection.get("links", []) if ln.get("rel") != "item"]
    ids: list[str] = []
    pixels = 0
    folders = sorted(p for p in source.iterdir() if (p / "original.json").is_file())
    for folder in folders:
        if items is not None and folder.name not in items:
            continue
        record, pixels = _native_item(folder, out, window)
        records = [record]
        for kind, when in (variants or {}).get(folder.name, {}).items():
            records.append(_variant(record, out, when, kind))
        if neighbours and folder.name in neighbours:
            records.append(_reprojected(record, out, *neighbours[folder.name]))
        for rec in records:
            (out / rec["id"]).mkdir(exist_ok=True)
            (out / rec["id"] / f"{rec['id']}.json").write_text(json.dumps(rec, indent=1))
            ids.append(str(rec["id"]))
            collection["links"].append(
                {
                    "rel": "item",
                    "href": f"./{rec['id']}/{rec['id']}.json",
                    "type": "application/json",
                }
            )
    (out / "collection.json").write_text(json.dumps(collection, indent=1))
    return NativeCatalog(path=out, item_ids=ids, pixels=pixels)


#: Landsat Collection 2 Level-2 asset key -> (Sentinel-2 file it is made from, file name).
LANDSAT_ASSETS: dict[str, tuple[str, str]] = {
    "blue": ("B02.tif", "SR_B2.TIF"),
    "green": ("B03.tif", "SR_B3.TIF"),
    "red": ("B04.tif", "SR_B4.TIF"),
    "nir08": ("B08.tif", "SR_B5.TIF"),
    "qa_pixel": ("SCL.tif", "QA_PIXEL.TIF"),
}
#: Collection 2 surface reflectance encoding: reflectance = value * 2.75e-5 - 0.2.
LANDSAT_SCALE, LANDSAT_OFFSET = 2.75e-5, -0.2


def _qa_pixel(scl: Any) -> Any:
    """QA_PIXEL bit flags (fill 0, cloud 3, shadow 4, clear 6, water 7) from Sen2Cor SCL."""
    qa = np.zeros(scl.shape, np.uint16)
    qa[scl == 0] |= 1 << 0
    qa[np.isin(scl, (8, 9, 10))] |= 1 << 3
    qa[scl == 3] |= 1 << 4
    qa[np.isin(scl, (4, 5, 6))] |= 1 << 6
    qa[scl == 6] |= 1 << 7
    return qa


def write_landsat_catalog(
    source: Path, out: Path, items: Sequence[str], window: tuple[int, int, int, int] | None = None
) -> list[dict[str, Any]]:
    """Items shaped as Landsat Collection 2 Level-2 records (``landsat-c2-l2``), made from the
    bundled Sentinel-2 items: a second collection shape with other band names, a 30 m grid,
    WRS-2 path/row instead of MGRS and another scale/offset (``raster:bands`` scale 2.75e-5,
    offset -0.2). The same ground has the same reflectance, so a harmonised cube must agree
    with the Sentinel-2 one.

    Args:
        source: a bundled Sentinel-2 catalog folder.
        out: the folder to write (one folder per item, plus ``collection.json``).
        items: Sentinel-2 item ids to convert.
        window: ``(col, row, width, height)`` in 10 m pixels, as in :func:`write_native_catalog`.

    Returns:
        The written items.
    """
    import rasterio

    out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    rows: dict[str, int] = {}  # one WRS-2 row per Sentinel-2 tile: the same ground, one tile
    links: list[dict[str, str]] = []
    for item_id in items:
        folder = Path(source) / item_id
        base = json.loads((folder / f"{item_id}.json").read_text())
        n = rows.setdefault(str(base["properties"].get("grid:code")), 28 - len(rows))
        with rasterio.open(folder / "B04.tif") as ref:
            crs = str(ref.crs)
            bounds = _window_bounds(ref.transform, ref.width, ref.height, window, 10.0)
        day = str(base["properties"]["datetime"])[:10].replace("-", "")
        lid = f"LC08_L2SP_190{n:03d}_{day}_02_T1"
        item_dir = out / lid
        item_dir.mkdir(parents=True, exist_ok=True)
        assets: dict[str, Any] = {}
        for key, (s2_file, name) in LANDSAT_ASSETS.items():
            data, _ = _native_pixels(folder / s2_file, bounds, 30.0)
            if key == "qa_pixel":
                data = _qa_pixel(data)
                bands = [{"nodata": 1, "data_type": "uint16", "unit": "bit index"}]
            else:
                refl = data.astype(np.float64) / 1e4
                dn = np.rint((refl - LANDSAT_OFFSET) / LANDSAT_SCALE)
                data = np.where(data > 0, np.clip(dn, 1, 65535), 0).astype(np.uint16)
                bands = [
                    {
                        "nodata": 0,
                        "data_type": "uint16",
                        "scale": LANDSAT_SCALE,
                        "offset": LANDSAT_OFFSET,
                        "unit": "reflectance",
                    }
                ]
            _write_cog(item_dir / name, data, crs, bounds[0], bounds[3], 30.0)
            assets[key] = {
                "href": (item_dir / name).resolve().as_uri(),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"] if key != "qa_pixel" else ["cloud", "cloud-shadow"],
                "proj:shape": [int(data.shape[0]), int(data.shape[1])],
                "proj:transform": [30.0, 0.0, bounds[0], 0.0, -30.0, bounds[3]],
                "raster:bands": bands,
            }
        geometry, bbox = _footprint(bounds, crs)
        record = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
            "id": lid,
            "collection": "landsat-c2-l2",
            "geometry": geometry,
            "bbox": bbox,
            "properties": {
                "datetime": base["properties"]["datetime"],
                "platform": "landsat-8",
                "instruments": ["oli", "tirs"],
                "eo:cloud_cover": base["properties"].get("eo:cloud_cover"),
                "landsat:wrs_path": "190",
                "landsat:wrs_row": f"{n:03d}",
                "landsat:collection_category": "T1",
                "proj:epsg": int(crs.split(":")[1]),
            },
            "links": [],
            "assets": assets,
        }
        (item_dir / f"{lid}.json").write_text(json.dumps(record, indent=1))
        written.append(record)
        links.append({"rel": "item", "href": f"./{lid}/{lid}.json", "type": "application/json"})
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "landsat-c2-l2",
        "description": "Landsat Collection 2 Level-2 shaped items made from Sentinel-2 L2A.",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": links,
    }
    (out / "collection.json").write_text(json.dumps(collection, indent=1))
    return written
