"""STAC items of the embedding products: the encoder (MLM extension) and each field tile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eoforge.embeddings.rasters import raster_item
from eoforge.embeddings.tiles import EmbeddingTile

__all__ = ["encoder_item", "field_item"]

MLM = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"


def encoder_item(
    folder: Path, record: dict[str, Any], bbox: Sequence[float], datetime: str
) -> dict[str, Any]:
    """The encoder's STAC item (MLM): inputs per pixel, a D-dimensional unit-vector output."""
    cfg = record["config"]
    t, bands, d = cfg["dates"], list(cfg["bands"]), cfg["dims"]
    x0, y0, x1, y1 = bbox
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM, "https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": f"eoforge-pixel-encoder-{record['weights_sha256'][:12]}",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
        },
        "bbox": [x0, y0, x1, y1],
        "properties": {
            "datetime": datetime,
            "mlm:name": "eoforge pixel encoder",
            "mlm:architecture": "MLP encoder + decoder (masked spectral-temporal reconstruction)",
            "mlm:tasks": ["embedding"],
            "mlm:framework": "pytorch",
            "mlm:total_parameters": record["parameters"],
            "mlm:pretrained": False,
            "mlm:input": [
                {
                    "name": "pixel time series",
                    "bands": bands,
                    "input": {
                        "shape": [-1, t, len(bands)],
                        "dim_order": ["batch", "time", "bands"],
                        "data_type": "float32",
                    },
                    "value_scaling": [
                        {"type": "z-score", "mean": m, "stddev": s}
                        for m, s in zip(cfg["mean"], cfg["std"], strict=True)
                    ],
                    "description": "surface reflectance per date; cloudy dates masked (SCL)",
                }
            ],
            "mlm:output": [
                {
                    "name": "embedding",
                    "tasks": ["embedding"],
                    "result": {
                        "shape": [-1, d],
                        "dim_order": ["batch", "embedding"],
                        "data_type": "float32",
                    },
                    "description": f"{d}-d unit-length vector per pixel",
                }
            ],
            "mlm:hyperparameters": {k: cfg[k] for k in ("epochs", "batch", "keep", "lr", "seed")},
        },
        "assets": {
            "weights": {
                "href": (folder / "encoder.safetensors").resolve().as_uri(),
                "type": "application/octet-stream; application=safetensors",
                "roles": ["mlm:model", "mlm:weights"],
                "mlm:artifact_type": "safetensors",
                "file:checksum": "1220" + record["weights_sha256"],
            },
            "config": {
                "href": (folder / "encoder.json").resolve().as_uri(),
                "type": "application/json",
                "roles": ["metadata"],
            },
        },
        "links": [],
    }


def field_item(tile: EmbeddingTile, field_uri: str, encoder_href: str, datetime: str,
               source_hrefs: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """The STAC item of one field tile: a Zarr v3 asset, int8 + per-pixel scale."""
    asset = {
        "href": f"{field_uri.rstrip('/')}/{tile.grid.tile}",
        "type": "application/vnd.zarr; version=3",
        "roles": ["data", "embeddings"],
        "title": f"{tile.dims}-d embedding field (int8 x per-pixel scale)",
    }
    item = raster_item(
        f"embedding-field-{tile.grid.tile}-{tile.attrs.get('encoder_sha256', '')[:12]}",
        tile.grid, {"embedding": asset}, datetime=datetime,
        properties={"eoforge:embedding_dims": tile.dims,
                    "eoforge:quantization": tile.attrs.get("quantization"),
                    "eoforge:item_ids": tile.attrs.get("item_ids", [])},
        derived_from=source_hrefs,
    )  # fmt: skip
    item["links"].append({"rel": "via", "href": encoder_href, "type": "application/json",
                          "title": "encoder (MLM item)"})  # fmt: skip
    return item
