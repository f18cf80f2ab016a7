"""Derive the shipped polygon label set from the bundled sample's Sen2Cor SCL rasters.

The polygons are *derived data*, not independent ground truth: for every item of
``examples/data/s2-l2a-mini``, the SCL water (6) and cloud (8, 9, 10) masks are traced into
polygons with ``rasterio.features.shapes`` (``--min-pixels N`` first merges regions smaller
than N pixels into their neighbours; the default 1 keeps every pixel, so the set reproduces
SCL exactly), reprojected to EPSG:4326 (as most label files arrive) and written as GeoParquet
with columns ``class``, ``item_id``, ``tile``, ``geometry``.

    .venv/bin/python scripts/derive_sample_labels.py [--out examples/data/labels/...parquet]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from eoforge.config import BUNDLED_CATALOG
from eoforge.labels.polygons import class_polygons

OUT = (
    Path(__file__).resolve().parents[1]
    / "examples"
    / "data"
    / "labels"
    / "s2-l2a-mini-water-cloud.parquet"
)
# SCL code -> class of the derived set; everything else gets no polygon
GROUPS = {6: "water", 8: "cloud", 9: "cloud", 10: "cloud"}


def derive(catalog: Path, min_pixels: int) -> gpd.GeoDataFrame:
    """Polygons of water and cloud for every item of a static catalog, in EPSG:4326."""
    frames = []
    for item_file in sorted(catalog.glob("*/*.json")):
        if item_file.name == "original.json":
            continue
        item = json.loads(item_file.read_text())
        with rasterio.open(item_file.parent / item["assets"]["scl"]["href"]) as src:
            scl = src.read(1)
            transform, crs = src.transform, src.crs.to_string()
        grouped = np.zeros_like(scl, dtype=np.uint8)  # 0 = no polygon
        grouped[scl == 6] = 1
        grouped[np.isin(scl, (8, 9, 10))] = 2
        polys = class_polygons(grouped, transform, crs, {1: "water", 2: "cloud"}, min_pixels)
        polys["item_id"] = item["id"]
        polys["tile"] = item["properties"]["grid:code"].removeprefix("MGRS-")
        frames.append(polys.to_crs("EPSG:4326"))
    out = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs="EPSG:4326")
    return out[["class", "item_id", "tile", "geometry"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=BUNDLED_CATALOG)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--min-pixels", type=int, default=1)
    args = parser.parse_args()
    frame = derive(args.catalog, args.min_pixels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out, index=False, compression="zstd")
    counts = frame["class"].value_counts().to_dict()
    print(f"wrote {len(frame)} polygons {counts} to {args.out}")


if __name__ == "__main__":
    main()
