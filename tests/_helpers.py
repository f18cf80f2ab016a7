"""Synthetic stores shared by the tests, importable as ``eoforge_test_helpers`` (see conftest.py).

A module rather than fixtures because module-scoped fixtures and module-level names (e.g.
``test_train.write_chip_store``) build them directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

BANDS = ("blue", "green", "red", "nir")
CLASSES = ("vegetation", "water", "cloud")
# Mean DN per class (rows) and band (blue, green, red, nir): the class is a function of the bands.
SPECTRA = np.array([[400, 700, 500, 3500], [600, 500, 300, 150], [4000, 4100, 4200, 4500]])


def write_tiny_cube(
    path: Path,
    origin: tuple[float, float] = (0.0, 0.0),
    times: Sequence[str] | None = None,
) -> Path:
    """Seeded cube of two 48x48 tiles (AAA, BBB; 7 km apart from ``origin``) of two dates.

    ``times``, if given, become the ``time`` coordinate (datetime64[ns]).
    """
    import xarray as xr

    rng = np.random.default_rng(0)
    coords = None if times is None else {"time": np.array(times, dtype="datetime64[ns]")}
    for i, tile in enumerate(("AAA", "BBB")):
        data = {
            b: (("time", "y", "x"), rng.integers(1, 5000, (2, 48, 48), dtype=np.uint16))
            for b in BANDS
        }
        data["scl"] = (
            ("time", "y", "x"),
            rng.choice(np.array([4, 5, 6, 8], np.uint8), (2, 48, 48)),
        )
        xr.Dataset(
            data,
            coords=coords,
            attrs={
                "crs": "EPSG:32633",
                "transform": [120.0, 0.0, origin[0] + i * 7000.0, 0.0, -120.0, origin[1]],
                "item_ids": [f"S2A_{tile}_2023081{d}_0_L2A" for d in (0, 5)],
            },
        ).to_zarr(path, group=tile, mode="w-", zarr_format=3, consolidated=False)
    return path


def write_chip_store(
    path: Path,
    size: int = 32,
    counts: tuple[int, int, int] = (16, 8, 8),
    *,
    nodata_corner: bool = True,
    band_mean: list[float] | None = None,
    band_std: list[float] | None = None,
) -> Path:
    """Seeded chips of 8x8-pixel class blocks with noisy class spectra (ADR 0001 layout).

    With ``nodata_corner`` each chip has a 2x2 nodata corner (x 0, y 255). ``band_mean`` /
    ``band_std`` default to the statistics of the valid train pixels.
    """
    import zarr

    rng = np.random.default_rng(42)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        cells = -(-size // 8)
        blocks = rng.integers(0, len(CLASSES), size=(n, cells, cells))
        y = blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :size, :size].astype(np.uint8)
        noise = rng.normal(1.0, 0.08, size=(n, 4, size, size))
        x = np.clip(SPECTRA[y].transpose(0, 3, 1, 2) * noise, 1, 10_000).astype(np.uint16)
        if nodata_corner:
            x[:, :, :2, :2], y[:, :2, :2] = 0, 255
        group = root.create_group(split)
        group.attrs.update(tiles=["T0"], item_ids=[f"item-{i}" for i in range(n)])
        group.create_array("x", data=x, chunks=(4, 4, size, size))
        group.create_array("y", data=y, chunks=(4, size, size))
        group.create_array("origin", data=np.zeros((n, 3), dtype=np.int32))
        if split == "train":
            valid = (x != 0).all(axis=1)
            train_mean = [float(x[:, b][valid].mean()) for b in range(4)]
            train_std = [float(x[:, b][valid].std()) for b in range(4)]
    root.attrs.update(
        bands=list(BANDS),
        classes=list(CLASSES),
        ignore_index=255,
        chip_size=size,
        band_mean=train_mean if band_mean is None else band_mean,
        band_std=train_std if band_std is None else band_std,
    )
    return path


def asset_bands(item: dict[str, Any], bands: Sequence[str]) -> np.ndarray:
    """A STAC item's bands (C, H, W) read straight from its ``file://`` or local asset files
    with rasterio, not through eoforge: the reference a prediction is compared with."""
    import rasterio

    arrays = []
    for band in bands:
        href = str(item["assets"][band]["href"])
        with rasterio.open(unquote(href.removeprefix("file://"))) as src:
            arrays.append(src.read(1))
    return np.stack(arrays)


def check_quality(
    metrics: dict[str, Any], support: dict[str, int], miou_margin: float, acc_margin: float
) -> None:
    """Quality floors from the data: the majority class and the random forest set the bar.

    A model that always answers the majority class scores its rate in pixel accuracy and
    ``rate / K`` in mIoU: the model must beat both clearly (accuracy halfway from that rate to a
    perfect score, mIoU by 0.2), and trail the random forest trained on the same chips by at most
    ``miou_margin`` / ``acc_margin`` (a short, clock-cut training may trail it).
    """
    total = sum(support.values())
    majority = max(support.values()) / total
    constant_miou = majority / len(support)
    acc, miou = metrics["pixel_accuracy"], metrics["miou"]
    base_acc, base_miou = metrics["baseline_pixel_accuracy"], metrics["baseline_miou"]
    summary = (
        f"model {miou:.3f} / {acc:.3f}, random forest {base_miou:.3f} / {base_acc:.3f}, "
        f"majority-class rate {majority:.3f} (constant-model mIoU {constant_miou:.3f})"
    )
    assert acc >= majority + 0.5 * (1 - majority), summary
    assert miou >= constant_miou + 0.2, summary
    assert base_acc >= majority + 0.3 * (1 - majority), summary  # the baseline is no straw man
    assert miou >= base_miou - miou_margin and acc >= base_acc - acc_margin, summary


#: STAC extension schemas vendored as test data (see tests/data/stac-schemas/README.md).
STAC_SCHEMAS = Path(__file__).with_name("data") / "stac-schemas"


def vendored_validator() -> Any:
    """A pystac JSON-schema validator that reads schemas only from pystac's bundled core schemas
    and :data:`STAC_SCHEMAS`: it never touches the network, and a schema that is not vendored is
    an error naming it (pass it to ``pystac.validation.validate_dict(..., validator=...)``)."""
    from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

    vendored = {}
    for path in sorted(STAC_SCHEMAS.glob("*/*/schema.json")):
        name, version = path.parent.parent.name, path.parent.name
        uri = f"https://stac-extensions.github.io/{name}/{version}/schema.json"
        vendored[uri] = json.loads(path.read_text())

    class Vendored(JsonSchemaSTACValidator):
        def _get_schema(self, schema_uri: str) -> dict[str, Any]:
            uri = schema_uri.removesuffix("#")
            if uri in vendored:
                return vendored[uri]
            if schema_uri in self.schema_cache:
                return self.schema_cache[schema_uri]
            raise GetSchemaError(
                schema_uri, FileNotFoundError(f"not vendored under {STAC_SCHEMAS}")
            )

    validator = Vendored()
    validator.schema_cache.update(vendored)
    return validator


def tiny_trained_model(chips_dir: Path, model_dir: Path) -> Path:
    """A small UNet trained for 2 epochs on a seeded synthetic chip store: its model folder."""
    from eoforge.config import TrainSpec
    from eoforge.training.train import train_model

    chips = write_chip_store(
        chips_dir / "chips.zarr",
        counts=(8, 4, 4),
        nodata_corner=False,
        band_mean=[1500.0, 1600.0, 1500.0, 2700.0],
        band_std=[1600.0, 1600.0, 1700.0, 1800.0],
    )
    spec = TrainSpec(max_epochs=2, batch_size=4, base_channels=8, threads=1)
    return train_model(chips, spec, model_dir, progress=False).model_dir


def tiny_exported_model(chips_dir: Path, model_dir: Path) -> Path:
    """:func:`tiny_trained_model` exported to ``model.onnx`` (parity-checked on seeded chips)."""
    from eoforge.export.onnx import export_onnx

    folder = tiny_trained_model(chips_dir, model_dir)
    sample = np.random.default_rng(0).integers(1, 6000, (2, 4, 32, 32)).astype(np.uint16)
    export_onnx(folder, folder / "model.onnx", sample)
    return folder


def noisy_scene() -> np.ndarray:
    """A seeded ``(4, 203, 317)`` uint16 scene (no window fits it evenly) with a nodata corner."""
    rng = np.random.default_rng(3)
    bands = rng.integers(200, 5000, (4, 203, 317), dtype=np.uint16)
    bands[:, :20, :40] = 0  # nodata corner
    return bands


class WholeTilesOnly:
    """A label source without ``label_rows``: chipping labels its tiles whole (the reference
    that labels by rows must match)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def describe(self) -> str:
        return str(self.inner.describe())

    def label_tile(self, ctx: Any) -> np.ndarray:
        return np.asarray(self.inner.label_tile(ctx))
