"""The ``labels`` section: the class schema and where labels come from (SCL, polygons, points,
a class raster)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from eoforge.config.base import _Spec

__all__ = [
    "LabelSourceSpec",
    "LabelSpec",
    "PointLabelsSpec",
    "PolygonLabelsSpec",
    "RasterLabelsSpec",
    "SclLabelsSpec",
]


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
