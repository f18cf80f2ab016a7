"""Label sources in the run spec: config, cache keys from label file bytes, checks before a run,
evaluation against the configured source, and a whole run on the shipped polygon labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
import zarr
from affine import Affine
from eoforge_test_helpers import check_quality  # type: ignore[import-not-found]

from eoforge.config import (
    ChipSpec,
    LabelSpec,
    PolygonLabelsSpec,
    RunSpec,
    SamplingSpec,
    SclLabelsSpec,
    load_run_spec,
)
from eoforge.errors import InputError
from eoforge.labels.classes import CubeClassMap, RasterFileLabels
from eoforge.labels.points import PointLabels
from eoforge.labels.polygons import PolygonLabels
from eoforge.labels.sources import check_label_source, label_digest, label_source
from eoforge.runs.store import plan_keys

SHIPPED = (
    Path(__file__).resolve().parents[3]
    / "examples"
    / "data"
    / "labels"
    / "s2-l2a-mini-water-cloud.parquet"
)
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "configs" / "polygons.yaml"
WATER_CLOUD = {"classes": ["other", "water", "cloud"]}
#: A tiny training spec: the run takes seconds on 2 cores.
TINY: dict[str, Any] = {
    "train": {
        "max_epochs": 2,
        "max_seconds": 30,
        "threads": 1,
        "base_channels": 4,
        "rf_n_estimators": 5,
        "rf_train_pixels": 5000,
    },
    "infer": {"window": 256, "overlap": 32, "threads": 1},
}


def _polygons(path: Path | str, **kw: Any) -> dict[str, Any]:
    return {**WATER_CLOUD, "source": {"kind": "polygons", "path": str(path), **kw}}


def _spec(labels: dict[str, Any], **sections: Any) -> RunSpec:
    return RunSpec.model_validate({"labels": labels, **sections})


def _items() -> list[dict[str, Any]]:
    assets = {b: {"href": f"file:///data/{b}.tif"} for b in ("blue", "green", "red", "nir", "scl")}
    return [{"id": "a", "properties": {"updated": "2023-08-01T00:00:00Z"}, "assets": assets}]


# ---------------------------------------------------------------------------- config


def test_defaults_keep_the_fingerprints_of_stores_written_before_label_sources() -> None:
    """`labels.source` and `chips.sampling` at their defaults reproduce the old behaviour, so
    they leave the fingerprints (and every existing cache key) unchanged."""
    assert LabelSpec().source == SclLabelsSpec()
    assert ChipSpec().sampling == SamplingSpec()
    assert LabelSpec().fingerprint() == (
        "9fd4777a9bd1ea8d0ca8a118287eb0e28969471192979e62bc08dd9d4364cf30"
    )
    assert ChipSpec().fingerprint() == (
        "bbe25b83e9b5af2e05b580abcea4294bbefb3f704114d48f5fe48157764451a4"
    )
    assert LabelSpec.model_validate(_polygons("x.parquet")).fingerprint() != (
        LabelSpec.model_validate({**WATER_CLOUD, "scl_groups": {}}).fingerprint()
    )
    assert ChipSpec.model_validate({"sampling": {"method": "random"}}).fingerprint() != (
        ChipSpec().fingerprint()
    )


def test_example_config_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLE.parents[2])  # relative label paths start at the working directory
    spec = load_run_spec(EXAMPLE)
    src = spec.labels.source
    assert isinstance(src, PolygonLabelsSpec)
    assert Path(src.path) == SHIPPED and src.background == "other"
    assert spec.labels.classes == ("other", "water", "cloud") and spec.labels.scl_groups == {}
    assert spec.chips.sampling.method == "balanced"
    again = RunSpec.model_validate(json.loads(json.dumps(spec.model_dump(mode="json"))))
    assert again == spec and again.fingerprint() == spec.fingerprint()
    assert isinstance(check_label_source(spec.labels), PolygonLabels)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"source": {"kind": "lines", "path": "x"}}, "does not match any of the expected tags"),
        ({"source": {"kind": "polygons"}}, "labels.source.polygons.path"),
        ({"source": {"kind": "polygons", "path": ""}}, "at least 1 character"),
        (_polygons("x.parquet", background="land"), "source.background names class"),
        (_polygons("x.parquet", priority=["cloud", "snow"]), "source.priority names class"),
        (_polygons("x.parquet", rename={"Wasser": "lake"}), "source.rename names class"),
        (_polygons("x.parquet", on_invalid="ignore"), "on_invalid"),
        (
            {**_polygons("x.parquet"), "scl_groups": {"water": [6]}},
            "scl_groups apply only to labels.source kind 'scl'",
        ),
        ({"source": {"kind": "raster", "path": "x.tif"}}, "exactly one of `codes`"),
        (
            {"source": {"kind": "raster", "path": "x.tif", "codes": {"water": [70000]}}},
            "not in 0..65535",
        ),
        (
            {"source": {"kind": "raster", "path": "x.tif", "codes": {"lake": [1]}}},
            "source.codes names class",
        ),
        ({"source": {"kind": "points", "path": "p.geojson", "radius": 3}}, "radius"),
    ],
)
def test_bad_label_source_is_an_input_error_naming_the_field(
    tmp_path: Path, labels: dict[str, Any], match: str
) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"labels": labels}))
    with pytest.raises(InputError, match=match) as info:
        load_run_spec(p)
    assert "run.yaml" in str(info.value)


def test_label_source_is_built_from_the_spec(tmp_path: Path) -> None:
    mapping = tmp_path / "codes.yaml"
    mapping.write_text("codes: {water: [80]}\n")
    assert isinstance(label_source(RunSpec().labels), CubeClassMap)
    poly = label_source(
        _spec(_polygons(SHIPPED, all_touched=True, priority=["cloud", "water"])).labels
    )
    assert (
        isinstance(poly, PolygonLabels)
        and poly.all_touched
        and poly.priority
        == (
            "cloud",
            "water",
        )
    )
    pts = label_source(
        _spec({**WATER_CLOUD, "source": {"kind": "points", "path": "p.gpkg"}}).labels
    )
    assert isinstance(pts, PointLabels)
    inline = {"kind": "raster", "path": "l.tif", "codes": {"water": [80]}}
    from_file = {"kind": "raster", "path": "l.tif", "mapping_file": str(mapping)}
    for raster in (inline, from_file):
        src = label_source(_spec({**WATER_CLOUD, "source": raster}).labels)
        assert isinstance(src, RasterFileLabels) and dict(src.mapping.codes) == {"water": (80,)}


# ---------------------------------------------------------------------------- cache keys


def test_chips_key_follows_the_label_file_bytes(tmp_path: Path) -> None:
    labels = tmp_path / "labels.parquet"
    shutil.copy(SHIPPED, labels)
    spec = _spec(_polygons(labels, background="other"))
    first = plan_keys(spec, _items())
    assert plan_keys(spec, _items()) == first  # same bytes, same keys
    labels.touch()  # a new mtime alone changes nothing
    assert plan_keys(spec, _items()) == first
    frame = gpd.read_parquet(labels)
    frame.iloc[1:].to_parquet(labels)  # one polygon less
    edited = plan_keys(spec, _items())
    assert edited["cube"] == first["cube"]
    assert all(edited[k] != first[k] for k in ("chips", "model", "baseline"))
    moved = tmp_path / "elsewhere.parquet"
    shutil.copy(SHIPPED, moved)
    assert label_digest(_spec(_polygons(moved)).labels) == label_digest(
        _spec(_polygons(SHIPPED)).labels
    )  # the digest is of content; the path still enters the key through the spec


def test_scl_keys_hold_no_label_digest() -> None:
    assert label_digest(RunSpec().labels) == ""


def test_raster_mapping_file_enters_the_key(tmp_path: Path) -> None:
    tif, mapping = tmp_path / "l.tif", tmp_path / "codes.yaml"
    tif.write_bytes(b"not read here")
    mapping.write_text("codes: {water: [80]}\n")
    spec = _spec(
        {
            **WATER_CLOUD,
            "source": {"kind": "raster", "path": str(tif), "mapping_file": str(mapping)},
        }
    )
    before = plan_keys(spec, _items())["chips"]
    mapping.write_text("codes: {water: [80, 81]}\n")
    assert plan_keys(spec, _items())["chips"] != before


def test_missing_label_file_fails_planning(tmp_path: Path) -> None:
    spec = _spec(_polygons(tmp_path / "nope.parquet"))
    with pytest.raises(InputError, match=r"labels.source.path: label file .*nope.parquet"):
        plan_keys(spec, _items())


# ---------------------------------------------------------------------------- checks


def _write_frame(path: Path, classes: list[str], column: str = "class") -> Path:
    geoms = [shapely.box(16.0, 46.0, 16.1, 46.1), shapely.box(16.2, 46.0, 16.3, 46.1)]
    gpd.GeoDataFrame({column: classes}, geometry=geoms, crs="EPSG:4326").to_parquet(path)
    return path


@pytest.mark.parametrize(
    ("column", "classes", "kw", "match"),
    [
        ("klasse", ["water", "cloud"], {}, r"no column 'class' \(columns: \['klasse'\]\)"),
        ("class", ["water", "lake"], {}, r"holds class\(es\) \['lake'\]"),
        ("class", ["water", "cloud"], {"priority": ["water"]}, "does not rank"),
    ],
)
def test_label_file_that_does_not_fit_is_refused_before_the_run(
    tmp_path: Path, column: str, classes: list[str], kw: dict[str, Any], match: str
) -> None:
    path = _write_frame(tmp_path / "l.parquet", classes, column)
    with pytest.raises(InputError, match=match) as info:
        check_label_source(_spec(_polygons(path, **kw)).labels)
    assert "l.parquet" in str(info.value)


def test_rename_maps_file_classes_onto_the_schema(tmp_path: Path) -> None:
    path = _write_frame(tmp_path / "l.parquet", ["Wasser", "Wolke"])
    check_label_source(_spec(_polygons(path, rename={"Wasser": "water", "Wolke": "cloud"})).labels)


def test_points_and_raster_sources_are_checked(tmp_path: Path) -> None:
    pts = tmp_path / "p.geojson"
    gpd.GeoDataFrame(
        {"class": ["water", "snow"]}, geometry=[shapely.Point(16, 46)] * 2, crs="EPSG:4326"
    ).to_file(pts)
    with pytest.raises(InputError, match=r"\['snow'\]"):
        check_label_source(
            _spec({**WATER_CLOUD, "source": {"kind": "points", "path": str(pts)}}).labels
        )
    tif = tmp_path / "l.tif"
    profile = {"driver": "GTiff", "height": 4, "width": 4, "count": 1, "dtype": "float32"}
    with rasterio.open(
        tif, "w", **profile, crs="EPSG:32633", transform=Affine(10, 0, 5e5, 0, -10, 5e6)
    ) as f:
        f.write(np.zeros((1, 4, 4), np.float32))
    raster = {"kind": "raster", "path": str(tif), "codes": {"water": [1]}}
    with pytest.raises(InputError, match="float32"):
        check_label_source(_spec({**WATER_CLOUD, "source": raster}).labels)


# ---------------------------------------------------------------------------- pipeline


def test_evaluation_truth_comes_from_the_label_source(real_cube: Path) -> None:
    """The shipped polygons rasterise back to SCL's water / cloud masks, so the test scenes'
    truth from the polygon source equals grouped SCL (labels under nodata ignored)."""
    from eoforge.cube.build import open_tile
    from eoforge.labels.classes import scl_to_classes
    from eoforge.runs.stages_report import _TestTruth

    spec = _spec(_polygons(SHIPPED))
    truth = _TestTruth(spec, real_cube)
    assert not truth.from_scl
    scl_spec = LabelSpec(
        classes=("other", "water", "cloud"), scl_groups={"water": (6,), "cloud": (8, 9, 10)}
    )
    ds = open_tile(real_cube, "33TWM")
    for t in range(ds.sizes["time"]):
        bands = np.stack([ds[b].isel(time=t).values for b in spec.stac.bands])
        expected = scl_to_classes(ds["scl"].isel(time=t).values, scl_spec)
        expected[(bands == 0).any(axis=0)] = 255
        assert np.array_equal(truth("33TWM", t, ds), expected)


def test_missing_label_file_stops_the_run_before_anything_is_written(tmp_path: Path) -> None:
    from eoforge.runs.pipeline import run_plain

    spec = _spec(_polygons(tmp_path / "gone.parquet"), **TINY)
    with pytest.raises(InputError, match=r"gone\.parquet"):
        run_plain(spec, tmp_path / "run", tmp_path / "store", api_url="http://127.0.0.1:9/")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_on_polygon_labels(stac_api: str, tmp_path: Path) -> None:
    """The whole chain on the bundled sample with the shipped polygons and balanced sampling."""
    from eoforge.runs.pipeline import run_plain

    # enough training to learn the task (the tiny spec's 2 epochs score below the majority)
    train = {**TINY["train"], "max_epochs": 8, "max_seconds": 90, "base_channels": 8}
    spec = _spec(
        _polygons(SHIPPED, background="other"),
        chips={"sampling": {"method": "balanced", "chips_per_tile": 200}},
        **{**TINY, "train": train},
    )
    out = tmp_path / "run"
    res = run_plain(spec, out, tmp_path / "store", api_url=stac_api)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["other", "water", "cloud"]
    assert SHIPPED.name in metrics["label_source"]
    assert metrics["test_scenes"] == 5
    # floors from the labels scored: the majority class ("other") and the random forest
    assert metrics["model"]["support"] == metrics["baseline"]["support"]
    # measured: model 0.614 / 0.947 against the random forest's 0.606 / 0.934 (majority 0.768)
    check_quality(metrics, metrics["model"]["support"], miou_margin=0.05, acc_margin=0.03)
    chips = zarr.open_group(res["chips"]["chips_uri"], mode="r")
    assert SHIPPED.name in str(chips.attrs["label_source"])
    assert chips.attrs["sampling"]["method"] == "balanced"
    assert res["chips"]["counts"]["test"] == 200
    prov = json.loads((out / "provenance.json").read_text())
    sha = prov["label_files"][0]["sha256"]
    assert prov["label_files"][0]["path"] == str(SHIPPED) and len(sha) == 64
    assert prov["parameters"]["labels"]["source"]["kind"] == "polygons"


def test_prefect_form_offers_every_label_source() -> None:
    """The pipeline deployment's form is built from this schema: the source union must be an
    ``anyOf`` (a chooser in Prefect's UI; ``oneOf`` is not rendered) and accept each kind."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from eoforge.orchestration.flows.pipeline import pipeline_flow

    schema = parameter_schema(pipeline_flow.fn).model_dump()
    source = schema["definitions"]["LabelSpec"]["properties"]["source"]
    assert "oneOf" not in source and len(source["anyOf"]) == 4
    assert "sampling" in schema["definitions"]["ChipSpec"]["properties"]
    spec = _spec(_polygons("/data/l.parquet", background="other"))
    assert validate({"spec": spec.model_dump(mode="json")}, schema, raise_on_error=False) == []
    bad = {"labels": {"source": {"kind": "lines"}}}
    assert validate({"spec": bad}, schema, raise_on_error=False, ignore_required=True)
