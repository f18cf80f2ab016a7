"""Run specifications: frozen pydantic models, loadable from YAML, that describe one pipeline run."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eoforge.errors import InputError

__all__ = [
    "BUNDLED_CATALOG",
    "TRAIN_PRESETS",
    "ChipSpec",
    "InferSpec",
    "LabelSourceSpec",
    "LabelSpec",
    "PointLabelsSpec",
    "PolygonLabelsSpec",
    "RasterLabelsSpec",
    "RunSpec",
    "SamplingSpec",
    "SclLabelsSpec",
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

    #: Fields added after stores were written: left out of the fingerprint while they hold
    #: their default (which reproduces the older behaviour), so cache keys of specs that do
    #: not use them stay valid (ADR 0006).
    _late_fields: ClassVar[tuple[str, ...]] = ()

    def fingerprint(self) -> str:
        """A stable sha256 of the spec's content (used in cache keys and provenance)."""
        payload = json.dumps(self._fingerprint_data(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def _fingerprint_data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json")
        fields = type(self).model_fields
        for name in self._late_fields:
            if getattr(self, name) == fields[name].get_default(call_default_factory=True):
                del data[name]
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, _Spec) and name in data:
                data[name] = value._fingerprint_data()
        return data


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


_Path = Annotated[
    str,
    Field(
        min_length=1,
        description="Local path (relative to the working directory) or fsspec URI (s3://...).",
    ),
]
_ClassColumn = Annotated[str, Field(min_length=1, description="Column holding class names.")]
_ItemColumn = Annotated[
    str,
    Field(
        min_length=1,
        description="Column restricting a row to one STAC item's date (optional in the file; "
        "rows without it label every date).",
    ),
]


class SclLabelsSpec(_Spec):
    """Labels from the cube's scene classification raster (``stac.label_asset``, Sen2Cor SCL),
    grouped into classes by ``labels.scl_groups``."""

    kind: Literal["scl"] = Field("scl", description="Labels from the cube's SCL asset.")


class PolygonLabelsSpec(_Spec):
    """Polygons in a vector file (GeoParquet, GeoJSON, GeoPackage; any CRS), rasterised onto each
    tile (rules in ADR 0002)."""

    kind: Literal["polygons"] = Field(description="Labels from polygons in a vector file.")
    path: _Path
    class_column: _ClassColumn = "class"
    item_column: _ItemColumn = "item_id"
    all_touched: bool = Field(
        False,
        description="Label every pixel a polygon touches (keeps thin features) instead of those "
        "whose centre it covers.",
    )
    priority: tuple[str, ...] | None = Field(
        None,
        description="Class names, winner first, for pixels covered by polygons of different "
        "classes (must rank every class in the file); None leaves such pixels unlabelled.",
    )
    background: str | None = Field(
        None, description="Class of pixels no polygon covers; None leaves them unlabelled."
    )
    rename: dict[str, str] | None = Field(
        None, description="Map values of class_column to class names before they are checked."
    )
    on_invalid: Literal["repair", "error"] = Field(
        "repair",
        description="Invalid geometries: repair (shapely.make_valid, with a warning) or error.",
    )


class PointLabelsSpec(_Spec):
    """Points in a vector file (any CRS): each labels the one pixel it falls in."""

    kind: Literal["points"] = Field(description="Labels from points in a vector file.")
    path: _Path
    class_column: _ClassColumn = "class"
    item_column: _ItemColumn = "item_id"


class RasterLabelsSpec(_Spec):
    """A class-coded GeoTIFF (any CRS), warped onto each tile with nearest neighbour; it labels
    every date alike. Give its codes inline (``codes``) or in a class mapping file."""

    kind: Literal["raster"] = Field(description="Labels from a class-coded GeoTIFF.")
    path: _Path
    codes: dict[str, tuple[int, ...]] | None = Field(
        None,
        description="Class name -> raster codes (0..65535); unlisted codes are unlabelled.",
    )
    mapping_file: str | None = Field(
        None,
        min_length=1,
        description="YAML/JSON class mapping file ('codes: {class: [codes]}') instead of codes.",
    )

    @model_validator(mode="after")
    def _one_mapping(self) -> RasterLabelsSpec:
        if (self.codes is None) == (self.mapping_file is None):
            raise ValueError("give exactly one of `codes` and `mapping_file`")
        for name, codes in (self.codes or {}).items():
            bad = [c for c in codes if not 0 <= c <= 65535]
            if bad:
                raise ValueError(f"codes {bad} of class '{name}' are not in 0..65535")
        return self


#: Where a run's labels come from, chosen by ``kind``.
LabelSourceSpec = Annotated[
    SclLabelsSpec | PolygonLabelsSpec | PointLabelsSpec | RasterLabelsSpec,
    Field(discriminator="kind"),
]


def _source_as_any_of(schema: dict[str, Any]) -> None:
    """Prefect's UI form offers a chooser for ``anyOf`` but cannot render ``oneOf`` (what pydantic
    writes for a discriminated union); the kinds exclude each other, so both mean the same."""
    source = schema.get("properties", {}).get("source", {})
    if "oneOf" in source:
        source["anyOf"] = source.pop("oneOf")


def _default_scl_groups() -> dict[str, tuple[int, ...]]:
    return {"vegetation": (4,), "bare": (5,), "water": (6,), "cloud": (8, 9, 10), "shadow": (3,)}


class LabelSpec(_Spec):
    """The class schema and where labels come from.

    By default labels are the cube's Sen2Cor SCL, whose 12 codes ``scl_groups`` group into five
    classes; codes not listed (0 no data, 1 saturated/defective, 2 dark area, 7 unclassified,
    11 snow/ice) are ignored in training and evaluation (label value ``ignore_index``). With a
    file ``source`` (polygons, points, raster) ``scl_groups`` does not apply and defaults to
    empty.
    """

    model_config = ConfigDict(json_schema_extra=_source_as_any_of)
    _late_fields = ("source",)

    classes: tuple[str, ...] = Field(
        ("vegetation", "bare", "water", "cloud", "shadow"),
        description="Class names, in the order of the model's outputs.",
    )
    scl_groups: dict[str, tuple[int, ...]] = Field(
        default_factory=_default_scl_groups,
        description="Class name -> SCL codes (0..11), for source kind 'scl'.",
    )
    ignore_index: int = Field(
        255, ge=0, le=255, description="Label value of unlabelled pixels (not trained on)."
    )
    source: LabelSourceSpec = Field(
        default_factory=SclLabelsSpec,  # type: ignore[arg-type]
        description="Where labels come from: kind scl (default), polygons, points or raster.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_scl_groups_for_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        source = data.get("source")
        kind = source.get("kind") if isinstance(source, dict) else getattr(source, "kind", "scl")
        if kind in (None, "scl"):
            return data
        if data.get("scl_groups"):
            raise ValueError(
                f"scl_groups apply only to labels.source kind 'scl', not '{kind}'; remove them"
            )
        return {**data, "scl_groups": {}}

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
        if len(self.classes) != len(set(self.classes)) or self.ignore_index < len(self.classes):
            raise ValueError("classes must be distinct and ignore_index not a class index")
        self._source_names_classes()
        return self

    def _source_names_classes(self) -> None:
        src = self.source
        named: dict[str, list[str]] = {}
        if isinstance(src, PolygonLabelsSpec):
            named = {
                "priority": list(src.priority or ()),
                "background": [src.background] if src.background is not None else [],
                "rename": list((src.rename or {}).values()),
            }
        elif isinstance(src, RasterLabelsSpec):
            named = {"codes": list(src.codes or {})}
        for field, names in named.items():
            unknown = sorted(set(names) - set(self.classes))
            if unknown:
                raise ValueError(
                    f"source.{field} names class(es) {unknown} that are not in `classes` "
                    f"{list(self.classes)}"
                )


class SamplingSpec(_Spec):
    """How chip windows are chosen and split (``chips.sampling``; used by :mod:`eoforge.sampling`).

    The defaults are the first chip stage's behaviour: a regular grid, split by tile.
    """

    method: Literal["grid", "random", "balanced"] = Field(
        default="grid",
        description="grid: every ChipSpec.stride step (overlap = size - stride); random: "
        "uniform windows; balanced: equal numbers of chips containing each class.",
    )
    chips_per_tile: int = Field(
        default=500,
        gt=0,
        description="random/balanced: chips drawn per tile (all slices and splits).",
    )
    min_class_fraction: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="balanced: share of a chip a class needs to count as present.",
    )
    split: Literal["tile", "block"] = Field(
        default="tile",
        description="tile: test tiles held out whole, eastmost val_fraction of train tiles is val; "
        "block: all tiles cut into square blocks assigned to splits at random.",
    )
    block_size: int = Field(default=256, gt=0, description="block split: block edge in pixels.")
    test_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="block split: share of blocks held out for test."
    )
    test_from: date | None = Field(
        default=None,
        description="temporal split: slices on/after this date only feed test, earlier slices "
        "only train/val (on top of the spatial split).",
    )
    max_cloud_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Drop chips with more cloud than this (None: no filter).",
    )
    cloud_variable: str = Field(default="scl", description="Cube variable the cloud filter reads.")
    cloud_codes: tuple[int, ...] = Field(
        default=(8, 9, 10),
        description="Codes of cloud_variable that count as cloud (SCL 8, 9, 10).",
    )
    seed: int = Field(default=0, description="Seed of random/balanced draws and block assignment.")

    @model_validator(mode="after")
    def _fractions(self) -> SamplingSpec:
        if self.method == "balanced" and self.chips_per_tile < 2:
            raise ValueError("balanced sampling needs chips_per_tile >= 2")
        return self


class ChipSpec(_Spec):
    """How the cube is cut into training / test chips."""

    _late_fields = ("sampling",)

    size: int = Field(64, gt=0, description="Chip edge length in pixels.")
    stride: int = Field(64, gt=0, description="Step between chip origins in pixels.")
    max_nodata_fraction: float = Field(
        0.05, ge=0, le=1, description="Drop chips with more input nodata than this."
    )
    min_labelled_fraction: float = Field(
        0.5, ge=0, le=1, description="Drop chips with fewer labelled pixels than this."
    )
    train_tiles: tuple[str, ...] = Field(
        ("33TWL",), description="MGRS tiles that feed training and validation."
    )
    test_tiles: tuple[str, ...] = Field(
        ("33TWM",), description="MGRS tiles held out for testing (and the scenes scored)."
    )
    val_fraction: float = Field(
        0.25, ge=0, lt=1, description="Eastmost fraction of each train tile kept for validation."
    )
    sampling: SamplingSpec = Field(
        default_factory=SamplingSpec,  # type: ignore[arg-type]
        description="Where chips are cut (grid / random / class-balanced) and how they are "
        "split (by tile or block, optionally in time); default: a grid, split by tile.",
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

    _late_fields = ("device", "amp", "ema_decay")

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
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights (and BatchNorm "
        "statistics) with this decay per optimiser step; validate, select and save the average. "
        "None: the raw weights.",
    )
    rf_n_estimators: int = Field(60, gt=0)
    rf_max_depth: int | None = Field(18)
    rf_train_pixels: int = Field(150_000, gt=0)


#: Named training configurations: ``quick`` is the demo's, ``full`` the <= 10 CPU-minute one.
TRAIN_PRESETS: dict[str, TrainSpec] = {
    "quick": TrainSpec.model_validate({}),
    "full": TrainSpec.model_validate(
        {
            "max_epochs": 80,
            "max_seconds": 570.0,
            "base_channels": 32,
            "class_weight_power": 0.0,
            "dice_weight": 0.5,
            "ema_decay": 0.99,
        }
    ),
}


class InferSpec(_Spec):
    """Whole-scene inference with ONNX Runtime."""

    _late_fields = ("pipelined",)

    window: int = Field(512, gt=0, description="Sliding window edge in pixels (multiple of 8).")
    overlap: int = Field(64, ge=0, description="Overlap between windows in pixels.")
    batch_size: int = Field(2, gt=0, description="Windows per ONNX Runtime call.")
    threads: int | None = Field(None, description="ORT intra-op threads (None: all cores).")
    pipelined: bool | None = Field(
        None,
        description="Run the model on one batch of windows in a worker thread while the previous "
        "batch is blended, so a GPU is not left idle between runs (None: on when the session "
        "runs on a GPU, off on the CPU, where both would share the same cores). The result is "
        "the same either way.",
    )
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
    labels: LabelSpec = Field(default_factory=LabelSpec)  # type: ignore[arg-type]
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
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise InputError(
            f"config file '{p}' is invalid:\n{exc}\nFix the fields named above."
        ) from exc
    return _absolute_label_paths(spec)


def _absolute_label_paths(spec: RunSpec) -> RunSpec:
    """Label file paths made absolute against the working directory, so the spec means the same
    files wherever it is passed on to (a deployment's worker, a task in another process)."""
    source = spec.labels.source
    update: dict[str, str] = {}
    for name in ("path", "mapping_file"):
        value = getattr(source, name, None)
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            update[name] = str(Path(value).absolute())
    if not update:
        return spec
    labels = spec.labels.model_copy(update={"source": source.model_copy(update=update)})
    return spec.model_copy(update={"labels": labels})
