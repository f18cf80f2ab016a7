"""Run specifications: frozen pydantic models, loadable from YAML, that describe one pipeline run.

A :class:`RunSpec` has one section per stage (:class:`StacSpec`, :class:`LabelSpec`,
:class:`ChipSpec`, :class:`TrainSpec`, :class:`InferSpec`); stage functions take their own
section, only the run layer (:mod:`eoforge.runs`) sees the whole spec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from eoforge.config.base import _Spec
from eoforge.config.checks import check_api_url, check_bbox, check_stac_datetime
from eoforge.config.labels import (
    LabelSourceSpec,
    LabelSpec,
    PointLabelsSpec,
    PolygonLabelsSpec,
    RasterLabelsSpec,
    SclLabelsSpec,
)
from eoforge.config.sections import (
    BUNDLED_CATALOG,
    TRAIN_PRESETS,
    ChipSpec,
    CubeSpec,
    InferSpec,
    S3ReadSpec,
    SamplingSpec,
    StacSpec,
    TrainSpec,
)
from eoforge.errors import InputError

__all__ = [
    "BUNDLED_CATALOG",
    "TRAIN_PRESETS",
    "ChipSpec",
    "CubeSpec",
    "InferSpec",
    "LabelSourceSpec",
    "LabelSpec",
    "PointLabelsSpec",
    "PolygonLabelsSpec",
    "RasterLabelsSpec",
    "RunSpec",
    "S3ReadSpec",
    "SamplingSpec",
    "SclLabelsSpec",
    "StacSpec",
    "TrainSpec",
    "check_api_url",
    "check_bbox",
    "check_stac_datetime",
    "default_store",
    "load_run_spec",
    "validation_lines",
]


def default_store() -> Path:
    """The content-addressed store of cubes, chips and models: ``$EOFORGE_STORE`` or
    ``~/.cache/eoforge/store``."""
    env = os.environ.get("EOFORGE_STORE")
    return Path(env) if env else Path.home() / ".cache" / "eoforge" / "store"


class RunSpec(_Spec):
    """One pipeline run."""

    _late_fields = ("cube",)

    stac: StacSpec = Field(default_factory=StacSpec)  # type: ignore[arg-type]
    cube: CubeSpec = Field(default_factory=CubeSpec)  # type: ignore[arg-type]
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
    if p.is_dir():
        raise InputError(
            f"config file '{p}' is a folder, not a file; pass the run spec YAML file itself "
            "(e.g. examples/configs/quick.yaml)."
        )
    if not p.is_file():
        raise InputError(f"config file '{p}' does not exist; pass an existing YAML file.")
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"config file '{p}' is not valid YAML: {exc}; fix its syntax.") from exc
    except ValueError as exc:  # YAML builds dates itself: an unquoted 2023-13-01 fails there
        raise InputError(
            f"config file '{p}' is not valid YAML: {exc} (a value YAML reads as a date, e.g. an "
            "unquoted 2023-13-01, is not a real one); fix the date, or quote it."
        ) from exc
    except OSError as exc:
        raise InputError(
            f"config file '{p}' cannot be read ({exc.strerror or exc}); check its permissions."
        ) from exc
    if raw is None:
        raise InputError(
            f"config file '{p}' is empty (or only comments); eoforge will not guess that you "
            "meant the defaults. Write the sections you want, or '{}' to run the defaults."
        )
    if not isinstance(raw, dict):
        raise InputError(
            f"config file '{p}' must hold a mapping at top level, got {type(raw).__name__}."
        )
    raw.update(overrides or {})
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as exc:
        raise InputError(
            f"config file '{p}' is invalid:\n{validation_lines(exc)}\nFix the fields named above."
        ) from exc
    return _absolute_label_paths(spec)


def validation_lines(exc: ValidationError) -> str:
    """One line per failed field of a spec: where it is in the YAML, what is wrong, the value."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = err.get("input")
        ours = err["type"] == "value_error"  # eoforge's validators name the value themselves
        shown = "" if ours or isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"  - {where}: {msg}{shown}")
    return "\n".join(lines)


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
