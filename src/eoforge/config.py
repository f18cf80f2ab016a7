"""Run specifications: frozen pydantic models, loadable from YAML, that describe one pipeline run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eoforge.errors import InputError

__all__ = [
    "BUNDLED_CATALOG",
    "TRAIN_PRESETS",
    "ChipSpec",
    "InferSpec",
    "LabelSpec",
    "RunSpec",
    "StacSpec",
    "TrainSpec",
    "default_store",
    "load_run_spec",
]

#: The bundled real Sentinel-2 L2A mini sample (10 items, 2 tiles, 5 dates).
BUNDLED_CATALOG = Path(__file__).resolve().parents[2] / "examples" / "data" / "s2-l2a-mini"


def default_store() -> Path:
    """The content-addressed store of cubes, chips and models: ``$EOFORGE_STORE`` or
    ``~/.cache/eoforge/store``."""
    env = os.environ.get("EOFORGE_STORE")
    return Path(env) if env else Path.home() / ".cache" / "eoforge" / "store"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def fingerprint(self) -> str:
        """A stable sha256 of the spec's content (used in cache keys and provenance)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()


class StacSpec(_Spec):
    """Where the imagery comes from and which items to use."""

    api_url: str | None = Field(
        None,
        description="STAC API root URL. None serves `catalog_dir` locally with `rustac serve`.",
    )
    catalog_dir: Path = Field(
        BUNDLED_CATALOG, description="Static STAC catalog to serve when `api_url` is None."
    )
    collection: str = Field("sentinel-2-l2a", description="Collection id to search.")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="Search area (lon/lat: west, south, east, north)."
    )
    datetime: str | None = Field(
        "2023-08-01/2023-08-31", description="RFC 3339 datetime or interval to search."
    )
    max_cloud_cover: float | None = Field(
        None, ge=0, le=100, description="Drop items with eo:cloud_cover above this (client-side)."
    )
    bands: tuple[str, ...] = Field(
        ("blue", "green", "red", "nir"), description="Asset keys used as model inputs, in order."
    )
    label_asset: str = Field("scl", description="Asset key of the scene-classification raster.")
    max_items: int = Field(500, gt=0, description="Upper bound on items taken from a search.")
    max_retries: int = Field(5, ge=0, description="HTTP retries for STAC API requests.")
    backoff_factor: float = Field(0.5, ge=0, description="Exponential backoff factor (seconds).")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout for the STAC API.")


class LabelSpec(_Spec):
    """Grouping of Sen2Cor SCL codes into the model's classes.

    The default groups the 12 SCL codes into five classes; codes not listed
    (0 no data, 1 saturated/defective, 2 dark area, 7 unclassified, 11 snow/ice) are
    ignored in training and evaluation (label value ``ignore_index``).
    """

    classes: tuple[str, ...] = ("vegetation", "bare", "water", "cloud", "shadow")
    scl_groups: dict[str, tuple[int, ...]] = Field(
        default_factory=lambda: {
            "vegetation": (4,),
            "bare": (5,),
            "water": (6,),
            "cloud": (8, 9, 10),
            "shadow": (3,),
        }
    )
    ignore_index: int = 255

    @model_validator(mode="after")
    def _groups_match_classes(self) -> LabelSpec:
        unknown = set(self.scl_groups) - set(self.classes)
        if unknown:
            raise ValueError(f"scl_groups names classes not in `classes`: {sorted(unknown)}")
        seen: dict[int, str] = {}
        for name, codes in self.scl_groups.items():
            for code in codes:
                if not 0 <= code <= 11:
                    raise ValueError(f"SCL code {code} of class '{name}' is not in 0..11")
                if code in seen:
                    raise ValueError(f"SCL code {code} is in both '{seen[code]}' and '{name}'")
                seen[code] = name
        return self


class ChipSpec(_Spec):
    """How the cube is cut into training / test chips."""

    size: int = Field(64, gt=0, description="Chip edge length in pixels.")
    stride: int = Field(64, gt=0, description="Step between chip origins in pixels.")
    max_nodata_fraction: float = Field(
        0.05, ge=0, le=1, description="Drop chips with more input nodata than this."
    )
    min_labelled_fraction: float = Field(
        0.5, ge=0, le=1, description="Drop chips with fewer labelled pixels than this."
    )
    train_tiles: tuple[str, ...] = ("33TWL",)
    test_tiles: tuple[str, ...] = ("33TWM",)
    val_fraction: float = Field(
        0.25, ge=0, lt=1, description="Eastmost fraction of each train tile kept for validation."
    )

    @field_validator("train_tiles", "test_tiles")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one tile is required")
        return v


class TrainSpec(_Spec):
    """Model training and the random-forest baseline.

    The defaults are the ``quick`` preset (the demo: <= ~2 CPU-minutes on 2 cores); see
    :data:`TRAIN_PRESETS` for ``full``. Training is reproducible (same seed, same threads ->
    same weights) whenever ``max_epochs`` fit in ``max_seconds``; otherwise the learning-rate
    schedule follows the wall clock and the result depends on the machine's speed.
    """

    seed: int = Field(0, description="Seed of torch, numpy, augmentation and the random forest.")
    max_epochs: int = Field(30, gt=0, description="Epochs; also the length of the LR schedule.")
    max_seconds: float = Field(
        110.0,
        gt=0,
        description="Wall-clock training budget; no epoch starts that would end after it.",
    )
    batch_size: int = Field(16, gt=0, description="Chips per optimiser step.")
    learning_rate: float = Field(
        6e-3, gt=0, description="Peak AdamW learning rate (after warm-up)."
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay.")
    warmup_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of the schedule warming the LR up before the cosine decay.",
    )
    base_channels: int = Field(
        16, gt=0, description="UNet width at full resolution (x2 per level)."
    )
    spectral_indices: bool = Field(
        True, description="Feed the network NDVI / NDWI computed from the raw bands."
    )
    class_weight_power: float = Field(
        0.25, ge=0, le=1, description="Cross-entropy class weight = train frequency ** -power."
    )
    dice_weight: float = Field(1.0, ge=0, description="Weight of the soft Dice loss term.")
    patience: int = Field(
        12, gt=0, description="Early stopping: epochs without a better validation mIoU."
    )
    threads: int | None = Field(None, gt=0, description="torch threads (None: all cores).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where to train: auto takes a usable CUDA GPU (GPU extra installed), "
        "else the CPU.",
    )
    amp: bool = Field(
        True,
        description="Mixed precision on CUDA (bf16, else fp16 with loss scaling); the CPU "
        "always trains in fp32.",
    )
    rf_n_estimators: int = Field(60, gt=0)
    rf_max_depth: int | None = Field(18)
    rf_train_pixels: int = Field(150_000, gt=0)


#: Named training configurations: ``quick`` is the demo's, ``full`` the <= 10 CPU-minute one.
TRAIN_PRESETS: dict[str, TrainSpec] = {
    "quick": TrainSpec.model_validate({}),
    "full": TrainSpec.model_validate(
        {"max_epochs": 60, "max_seconds": 570.0, "base_channels": 32, "class_weight_power": 0.1}
    ),
}


class InferSpec(_Spec):
    """Whole-scene inference with ONNX Runtime."""

    window: int = Field(512, gt=0, description="Sliding window edge in pixels (multiple of 8).")
    overlap: int = Field(64, ge=0, description="Overlap between windows in pixels.")
    batch_size: int = Field(2, gt=0, description="Windows per ONNX Runtime call.")
    threads: int | None = Field(None, description="ORT intra-op threads (None: all cores).")
    serve_baseline_onnx: bool = Field(
        False,
        description="Export the random forest with skl2onnx and predict it through ONNX Runtime "
        "(the model's path) instead of scikit-learn. Slower on CPU for large forests.",
    )

    @model_validator(mode="after")
    def _overlap_smaller_than_window(self) -> InferSpec:
        if self.overlap >= self.window:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than window ({self.window})"
            )
        return self


class RunSpec(_Spec):
    """One pipeline run."""

    stac: StacSpec = Field(default_factory=StacSpec)  # type: ignore[arg-type]
    labels: LabelSpec = Field(default_factory=LabelSpec)
    chips: ChipSpec = Field(default_factory=ChipSpec)  # type: ignore[arg-type]
    train: TrainSpec = Field(default_factory=TrainSpec)  # type: ignore[arg-type]
    infer: InferSpec = Field(default_factory=InferSpec)  # type: ignore[arg-type]


def load_run_spec(path: Path | str, overrides: dict[str, Any] | None = None) -> RunSpec:
    """Load a :class:`RunSpec` from a YAML file.

    Raises:
        InputError: the file is missing, not YAML, or does not validate.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file '{p}' does not exist; pass an existing YAML file.")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config file '{p}' is not valid YAML: {exc}; fix its syntax.") from exc
    if not isinstance(raw, dict):
        raise InputError(
            f"config file '{p}' must hold a mapping at top level, got {type(raw).__name__}."
        )
    raw.update(overrides or {})
    try:
        return RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise InputError(
            f"config file '{p}' is invalid:\n{exc}\nFix the fields named above."
        ) from exc
