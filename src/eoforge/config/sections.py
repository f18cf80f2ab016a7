"""The run spec's sections other than labels: where imagery comes from (``stac``), how chips
are cut (``chips``), training (``train``) and inference (``infer``)."""

from __future__ import annotations

from datetime import date, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from eoforge.config.base import _Spec
from eoforge.config.checks import check_api_url, check_bbox, check_stac_datetime

__all__ = [
    "BUNDLED_CATALOG",
    "BUNDLED_CATALOG_NAME",
    "TRAIN_PRESETS",
    "ChipSpec",
    "CubeSpec",
    "InferSpec",
    "S3ReadSpec",
    "SamplingSpec",
    "StacSpec",
    "TrainSpec",
]

#: The bundled real Sentinel-2 L2A mini sample (10 items, 2 tiles, 5 dates), package data of
#: ``eoforge.stac`` (so a wheel installed anywhere carries it).
BUNDLED_CATALOG = Path(str(files("eoforge"))) / "stac" / "sample" / "s2-l2a-mini"
#: How a spec names the bundled sample: the same on every install (no absolute install path in
#: the Prefect UI form, provenance or cache keys).
BUNDLED_CATALOG_NAME = "bundled:s2-l2a-mini"


class S3ReadSpec(_Spec):
    """How ``s3://`` asset hrefs are read (GDAL's ``/vsis3/``): credentials come from the usual
    AWS chain (environment, ``~/.aws``, instance role); these say what the bucket needs."""

    requester_pays: bool = Field(
        False, description="The bucket is requester-pays: reads are billed to your account."
    )
    unsigned: bool = Field(False, description="Public bucket: read without credentials.")
    profile: str | None = Field(None, description="AWS profile (~/.aws) to read with.")
    region: str | None = Field(None, description="The bucket's region, e.g. 'us-west-2'.")
    endpoint_url: str | None = Field(
        None,
        description="An S3-compatible endpoint (MinIO, Ceph, a local stand-in), e.g. "
        "'http://127.0.0.1:9000'; None for AWS.",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"endpoint_url {v!r} must be an http(s) URL with a host, e.g. "
                "'https://s3.example.org' or 'http://127.0.0.1:9000'"
            )
        return v.rstrip("/")

    @model_validator(mode="after")
    def _signed_or_not(self) -> S3ReadSpec:
        if self.unsigned and (self.requester_pays or self.profile):
            raise ValueError(
                "an unsigned (anonymous) read cannot be requester-pays or use a profile; "
                "drop `unsigned` or the others"
            )
        return self


class StacSpec(_Spec):
    """Where the imagery comes from and which items to use."""

    api_url: str | None = Field(
        None,
        description="STAC API root URL. None serves `catalog_dir` locally with `rustac serve`.",
    )
    catalog_dir: Path = Field(
        BUNDLED_CATALOG,
        description="Static STAC catalog folder to serve when `api_url` is None; "
        f"`{BUNDLED_CATALOG_NAME}` is the sample shipped with eoforge.",
        # forms built from the JSON schema (the Prefect UI) show the name, not the install path
        json_schema_extra={"default": BUNDLED_CATALOG_NAME},
    )
    collection: str = Field("sentinel-2-l2a", description="Collection id to search.")
    bbox: tuple[float, float, float, float] | None = Field(
        None,
        description="Area of interest (lon/lat: west, south, east, north): bounds the search "
        "and what is loaded into the cube.",
    )
    aoi: dict[str, Any] | str | None = Field(
        None,
        description="Area of interest as a GeoJSON geometry, Feature or FeatureCollection "
        "(lon/lat), or the path of a vector file (any CRS): items are searched by intersection "
        "and the cube holds only its bounding box. Use either `bbox` or `aoi`.",
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

    sign: Literal["planetary-computer"] | None = Field(
        None,
        description="Sign asset hrefs before reading them: 'planetary-computer' (SAS tokens "
        "from PC_SDK_SAS_URL, PC_SDK_SUBSCRIPTION_KEY); None for public or credentialed assets.",
    )

    s3: S3ReadSpec = Field(
        default_factory=S3ReadSpec,  # type: ignore[arg-type]
        description="How s3:// asset hrefs are read: requester pays, anonymous, profile, "
        "region, an S3-compatible endpoint.",
    )

    _late_fields = ("aoi", "sign", "s3")

    @model_validator(mode="after")
    def _one_area(self) -> StacSpec:
        if self.bbox is not None and self.aoi is not None:
            raise ValueError("give either `bbox` or `aoi`, not both")
        return self

    @field_validator("catalog_dir", mode="before")
    @classmethod
    def _bundled_catalog(cls, value: Any) -> Any:
        return BUNDLED_CATALOG if str(value) == BUNDLED_CATALOG_NAME else value

    @field_serializer("catalog_dir")
    def _catalog_name(self, value: Path) -> str:
        return BUNDLED_CATALOG_NAME if Path(value) == BUNDLED_CATALOG else str(value)

    @field_validator("api_url")
    @classmethod
    def _absolute_url(cls, v: str | None) -> str | None:
        return None if v is None else check_api_url(v)

    @field_validator("datetime", mode="before")
    @classmethod
    def _yaml_date(cls, v: object) -> object:
        # YAML reads an unquoted 2023-08-01 as a date: it means the same as the string
        return v.isoformat() if isinstance(v, date | datetime) else v

    @field_validator("datetime")
    @classmethod
    def _rfc3339(cls, v: str | None) -> str | None:
        return None if v is None else check_stac_datetime(v)

    @field_validator("bbox")
    @classmethod
    def _lon_lat_box(
        cls, v: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if v is not None:
            check_bbox(v)
        return v


#: Resampling methods of GDAL that odc-stac accepts.
Resampling = Literal[
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "min",
    "max",
    "med",
    "q1",
    "q3",
]


def _default_resampling() -> dict[str, Resampling]:
    return {"*": "bilinear", "scl": "nearest"}


class CubeSpec(_Spec):
    """The cube's pixel grid, chunking and units (``cube``).

    By default each MGRS tile keeps its items' own CRS and the finest native resolution of the
    loaded bands (coarser bands are resampled onto it), bounded by the area of interest
    (``stac.bbox`` / ``stac.aoi``) when there is one.
    """

    resolution: float | None = Field(
        None,
        gt=0,
        description="Pixel size in units of the CRS (metres for UTM); None: the finest native "
        "resolution of the loaded bands.",
    )
    crs: str | None = Field(
        None,
        description="Output CRS (e.g. 'EPSG:32633'); None: each tile's own CRS. Needs "
        "`resolution`.",
    )
    resampling: dict[str, Resampling] = Field(
        default_factory=_default_resampling,
        description="Resampling per variable ('*': every other variable); class rasters need "
        "nearest or mode, reflectance bilinear or average.",
    )
    chunk: int = Field(
        2048,
        ge=256,
        le=8192,
        description="Zarr chunk edge in pixels: what one read and one write hold in memory.",
    )
    harmonise: bool = Field(
        True,
        description="Convert bands to one scale/offset (`scale`, `offset`) using each item's "
        "`raster:bands` scale/offset, so items of different processing baselines agree.",
    )
    scale: float = Field(
        1e-4, gt=0, description="Reflectance = value * scale + offset in the cube (harmonised)."
    )
    offset: float = Field(
        0.0,
        description="Offset of the harmonised integers (default 0: reflectance x 10000, so "
        "Sentinel-2 values of baseline 04.00+ with the offset not applied lose 1000).",
    )

    @model_validator(mode="after")
    def _crs_needs_resolution(self) -> CubeSpec:
        if self.crs is not None and self.resolution is None:
            raise ValueError("cube.crs needs cube.resolution (in units of that CRS)")
        return self


class SamplingSpec(_Spec):
    """How chip windows are chosen and split (``chips.sampling``; used by :mod:`eoforge.chips.sampling`).

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
    """Whole-scene inference: the sliding windows, the runtime and its precision."""

    _late_fields = ("pipelined", "precision", "backend")

    window: int = Field(
        512,
        gt=0,
        description="Largest sliding window edge in pixels (multiple of 8). Over a longer "
        "scene the windows are as short as their count allows, spread evenly (a 10980 px tile "
        "takes 24 x 24 windows of 504 px at 512 / 48).",
    )
    overlap: int = Field(
        48,
        ge=0,
        description="Overlap between windows in pixels. 48 px (about 10 % of 512) put as few "
        "pixels off the seamless map as 64 px did in `python -m benchmarks.overlap` (0.11-0.12 "
        "vs 0.12-0.13 % at 256 px windows; 32 px: 0.16-0.17 %) with 8 % fewer windows per "
        "10980 px tile.",
    )
    batch_size: int = Field(2, gt=0, description="Windows per model run.")
    threads: int | None = Field(
        None, gt=0, description="Inference threads of the runtime (None: one per physical core)."
    )
    pipelined: bool | None = Field(
        None,
        description="Run the model on one batch of windows in a worker thread while the previous "
        "batch is blended, so a GPU is not left idle between runs (None: on when the session "
        "runs on a GPU, off on the CPU, where both would share the same cores). The result is "
        "the same either way.",
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="Run the fp32 model, or its int8 version (static QDQ quantization of the "
        "convolutions, their ReLUs and max-pooling, calibrated on training chips at export; "
        "faster on CPUs with int8 dot products, class maps within a fraction of a percent of "
        "fp32's: benchmarks/inference.py).",
    )
    backend: Literal["auto", "onnxruntime", "openvino", "torch"] = Field(
        "auto",
        description="What runs the model: OpenVINO (model.onnx on the CPU; faster there than ONNX "
        "Runtime, 2x in int8: ADR 0012), ONNX Runtime (model.onnx, CUDA provider with "
        "onnxruntime-gpu), or torch (model.safetensors, through the same predictor). auto: "
        "ONNX Runtime on a CUDA GPU it can use, torch on a CUDA GPU it cannot (the default "
        "install; fp32), OpenVINO on the CPU (ONNX Runtime if openvino is not installed).",
    )
    serve_baseline_onnx: bool = Field(
        False,
        description="Export the random forest with skl2onnx and predict it through ONNX Runtime "
        "(the model's path) instead of scikit-learn. Slower on CPU for large forests.",
    )

    @field_validator("window")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(
                f"window {v} is not a multiple of 8 (the UNet halves it three times); "
                f"use e.g. {max(8, v // 8 * 8)} or {(v // 8 + 1) * 8}"
            )
        return v

    @model_validator(mode="after")
    def _overlap_smaller_than_window(self) -> InferSpec:
        if self.overlap >= self.window:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than window ({self.window})"
            )
        return self
