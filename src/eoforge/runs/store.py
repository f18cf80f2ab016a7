"""The content-addressed store: cache keys of stored products and where they live (ADR 0003).

Expensive, reusable products (cube, chips, model, baseline) are stored under a path derived from
what identifies their data (STAC item ids + ``updated``, spec fingerprints, label file digests),
so a rerun with the same inputs finds them. The store also keeps the pointer to its production
model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eoforge.config import CubeSpec, RunSpec
from eoforge.errors import InputError

__all__ = [
    "ITEMS_FILE",
    "PRODUCTION_POINTER",
    "STORE_FORMAT",
    "plan_keys",
    "production_model",
    "promote_model",
    "store_paths",
    "stored",
]


ITEMS_FILE = "items.json"
#: Bumped whenever a stored product's format or the code producing it changes meaning, so
#: products of older code are never reused (part of every cache key; ADR 0003).
STORE_FORMAT = "eoforge-store/2"


def _h(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def plan_keys(spec: RunSpec, items: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Cache keys of the stored products, from the inputs each one depends on.

    Label files (polygons, points, raster) enter the chips key by the sha256 of their bytes,
    so editing one recomputes the chips and everything downstream (ADR 0006).

    Raises:
        InputError: a label file named in the spec does not exist.
    """
    from eoforge.cube.build import cube_fingerprint
    from eoforge.labels.sources import label_digest
    from eoforge.stac.aoi import aoi_digest

    # The grid and the area enter the key only when set: default specs keep their keys.
    grid = [] if spec.cube == CubeSpec.model_validate({}) else [spec.cube.fingerprint()]
    area = aoi_digest(spec.stac)
    cube = _h(
        STORE_FORMAT,
        cube_fingerprint(items, [*spec.stac.bands, spec.stac.label_asset]),
        *grid,
        *([f"aoi={area}"] if area else []),
    )
    labels = label_digest(spec.labels)
    chips = _h(
        cube,
        spec.chips.fingerprint(),
        spec.labels.fingerprint(),
        ",".join(spec.stac.bands),
        *([labels] if labels else []),  # SCL (in the cube) keeps its keys of before ADR 0006
    )
    model = _h(chips, spec.train.fingerprint(), "model")
    baseline = _h(chips, spec.train.fingerprint(), "random-forest")
    return {"cube": cube, "chips": chips, "model": model, "baseline": baseline}


_STORE_LAYOUT = {
    "cube": ("cubes", ".zarr"),
    "chips": ("chips", ".zarr"),
    "model": ("models", ""),
    "baseline": ("baselines", ""),
}


def stored(store: Path | str, kind: str, key: str) -> Path:
    """Where the stored product ``kind`` with cache key ``key`` lives (short keys stay readable)."""
    folder, suffix = _STORE_LAYOUT[kind]
    return Path(store) / folder / f"{key[:24]}{suffix}"


def store_paths(store: Path, keys: dict[str, str]) -> dict[str, Path]:
    """Every stored product's path for a set of cache keys."""
    return {kind: stored(store, kind, keys[kind]) for kind in _STORE_LAYOUT}


PRODUCTION_POINTER = "production-model.json"


def promote_model(store: str, model_dir: str, metrics: dict[str, Any], run: str) -> dict[str, Any]:
    """Make ``model_dir`` the store's production model if it beats the random forest on mIoU.

    Inference deployments (scheduled or event-triggered) use the production model.
    """
    from eoforge.io.atomic import write_json_atomic

    better = metrics["miou"] is not None and metrics["miou"] >= (metrics["baseline_miou"] or 0.0)
    decision = {
        "promoted": bool(better),
        "model_dir": model_dir,
        "miou": metrics["miou"],
        "baseline_miou": metrics["baseline_miou"],
        "run": run,
    }
    if better:
        write_json_atomic(Path(store) / PRODUCTION_POINTER, decision)
    return decision


def production_model(store: str) -> str:
    """The store's production model directory.

    Raises:
        InputError: no model was promoted yet.
    """
    pointer = Path(store) / PRODUCTION_POINTER
    if not pointer.is_file():
        raise InputError(
            f"store '{store}' has no production model ({PRODUCTION_POINTER} missing); run the "
            "pipeline (or train deployment) first, or pass model_dir explicitly."
        )
    model_dir = str(json.loads(pointer.read_text())["model_dir"])
    if not (Path(model_dir) / "model.onnx").is_file():
        raise InputError(f"production model '{model_dir}' has no model.onnx; re-run training.")
    return model_dir
