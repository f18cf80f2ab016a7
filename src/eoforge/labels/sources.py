"""A run's label source: built from ``labels.source`` of its spec, checked before the run starts,
and fingerprinted by the bytes of the files it reads, so an edited label file never serves stale
chips (ADR 0006)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from eoforge.config import (
    LabelSpec,
    PointLabelsSpec,
    PolygonLabelsSpec,
    RasterLabelsSpec,
)
from eoforge.errors import InputError
from eoforge.io.stores import is_remote
from eoforge.labels.classes import ClassMapping, CubeClassMap, LabelSource, RasterFileLabels
from eoforge.labels.points import PointLabels
from eoforge.labels.polygons import PolygonLabels

__all__ = [
    "check_label_source",
    "label_digest",
    "label_file_records",
    "label_files",
    "label_source",
]

_CHUNK = 1 << 20


def label_files(labels: LabelSpec) -> list[tuple[str, str]]:
    """``(spec field, path)`` of every file the label source reads (none for SCL)."""
    src = labels.source
    if isinstance(src, PolygonLabelsSpec | PointLabelsSpec):
        return [("labels.source.path", src.path)]
    if isinstance(src, RasterLabelsSpec):
        files = [("labels.source.path", src.path)]
        if src.mapping_file is not None:
            files.append(("labels.source.mapping_file", src.mapping_file))
        return files
    return []


def _file_sha256(field: str, path: str) -> str:
    digest = hashlib.sha256()
    try:
        if is_remote(path):
            import fsspec

            with fsspec.open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
        else:
            with Path(path).open("rb") as f:
                while block := f.read(_CHUNK):
                    digest.update(block)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        relative = not is_remote(path) and not Path(path).is_absolute()
        where = f" (relative paths start at '{os.getcwd()}')" if relative else ""
        raise InputError(
            f"{field}: label file '{path}' does not exist{where}; fix the path in the run spec."
        ) from exc
    except PermissionError as exc:
        raise InputError(f"{field}: label file '{path}' cannot be read: {exc}.") from exc
    return digest.hexdigest()


def label_file_records(labels: LabelSpec) -> list[dict[str, str]]:
    """``field``, ``path`` and ``sha256`` of each file the label source reads (for provenance).

    Raises:
        InputError: a file does not exist or cannot be read.
    """
    return [
        {"field": field, "path": path, "sha256": _file_sha256(field, path)}
        for field, path in label_files(labels)
    ]


def label_digest(labels: LabelSpec) -> str:
    """sha256 over the bytes of the label source's files ('' for SCL, which lives in the cube).

    Raises:
        InputError: a file does not exist or cannot be read.
    """
    records = label_file_records(labels)
    if not records:
        return ""
    return hashlib.sha256(
        "|".join(f"{r['field']}={r['sha256']}" for r in records).encode()
    ).hexdigest()


def label_source(labels: LabelSpec, label_asset: str = "scl") -> LabelSource:
    """The :class:`~eoforge.labels.classes.LabelSource` that ``labels.source`` describes.

    Args:
        labels: the run's label section (class schema and source).
        label_asset: the cube variable holding scene classification codes, read by the
            default ``scl`` source (``stac.label_asset``).

    Raises:
        InputError: a raster source's class mapping file is missing or malformed.
    """
    src = labels.source
    if isinstance(src, PolygonLabelsSpec):
        return PolygonLabels(
            src.path,
            class_column=src.class_column,
            item_column=src.item_column,
            all_touched=src.all_touched,
            priority=src.priority,
            background=src.background,
            rename=src.rename,
            on_invalid=src.on_invalid,
        )
    if isinstance(src, PointLabelsSpec):
        return PointLabels(src.path, class_column=src.class_column, item_column=src.item_column)
    if isinstance(src, RasterLabelsSpec):
        if src.mapping_file is not None:
            mapping = ClassMapping.from_file(src.mapping_file)
        else:
            mapping = ClassMapping(dict(src.codes or {}), "labels.source.codes")
        return RasterFileLabels(src.path, mapping)
    return CubeClassMap(label_asset)


def check_label_source(labels: LabelSpec, label_asset: str = "scl") -> LabelSource:
    """Build the run's label source and check its files against the class schema.

    Called before a run writes anything: a missing file, a missing class column, classes
    outside ``labels.classes`` or an unreadable raster stop the run here. Per-tile problems
    (labels that miss a tile) surface when chips are cut, still before they are stored.

    Raises:
        InputError: naming the file or spec field and what to change.
    """
    label_digest(labels)  # every file exists and is readable
    source = label_source(labels, label_asset)
    if isinstance(source, PolygonLabels | PointLabels | RasterFileLabels):
        source.check(labels)
    return source
