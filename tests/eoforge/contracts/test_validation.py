"""Data contracts: each stage table passes on good data and fails loudly on bad data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
import zarr
from rasterio.transform import from_origin

from eoforge.contracts.files import (
    DEFAULT_CONTRACTS_DIR,
    STAGES,
    load_contract,
    resolve_contracts_dir,
)
from eoforge.contracts.tables import chips_table, cube_table, items_table, predictions_table
from eoforge.contracts.validation import ContractResult, enforce, validate_table
from eoforge.errors import ContractViolation, InputError

BANDS = ("blue", "green", "red", "nir")
VARIABLES = (*BANDS, "scl")
IDS = ("S2A_33TWL_20230815_0_L2A", "S2A_33TWL_20230818_0_L2A")


# --------------------------------------------------------------------------- tiny data


def _item(
    item_id: str, assets: Sequence[str] = VARIABLES, props: dict[str, Any] | None = None
) -> dict[str, Any]:
    properties = {
        "datetime": "2023-08-15T09:58:11.662000Z",
        "eo:cloud_cover": 12.5,
        "proj:epsg": 32633,
        "grid:code": "MGRS-33TWL",
        **(props or {}),
    }
    return {
        "type": "Feature",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "properties": properties,
        "assets": {a: {"href": f"./{a}.tif"} for a in assets},
    }


def _cube(path: Path, blank: tuple[str, int] | None = None, size: int = 16) -> Path:
    """A one-tile cube in the ADR 0001 layout; ``blank`` = (variable, t) set to nodata."""
    rng = np.random.default_rng(0)
    data: dict[str, Any] = {
        b: (("time", "y", "x"), rng.integers(1, 5000, (2, size, size), dtype=np.uint16))
        for b in BANDS
    }
    data["scl"] = (
        ("time", "y", "x"),
        rng.choice(np.array([3, 4, 5, 8], np.uint8), (2, size, size)),
    )
    if blank:
        data[blank[0]][1][blank[1]] = 0
    ds = xr.Dataset(
        data,
        coords={"time": np.arange(2).astype("datetime64[D]")},
        attrs={"crs": "EPSG:32633", "tile": "33TWL", "item_ids": list(IDS)},
    )
    ds.to_zarr(path, group="33TWL", mode="w", zarr_format=3, consolidated=False)
    return path


def _chips(path: Path, nodata_pixels: int = 0, size: int = 8) -> Path:
    """A chips store with 3 train and 2 test chips; chip 1 of train gets ``nodata_pixels``."""
    rng = np.random.default_rng(1)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update(bands=list(BANDS), classes=["a", "b", "c"], ignore_index=255, chip_size=size)
    for split, n, item in (("train", 3, IDS[0]), ("test", 2, "S2B_33TWM_20230820_0_L2A")):
        x = rng.integers(1, 4000, (n, len(BANDS), size, size), dtype=np.uint16)
        y = rng.integers(0, 3, (n, size, size), dtype=np.uint8)
        if split == "train" and nodata_pixels:
            x[1, 2].flat[:nodata_pixels] = 0
        g = root.create_group(split)
        g.attrs.update(tiles=[item.split("_")[1]], item_ids=[item] * n)
        g.create_array("x", data=x)
        g.create_array("y", data=y)
        g.create_array("origin", data=np.zeros((n, 3), np.int32))
    root.create_group("val")  # empty split: skipped
    return path


def _tif(path: Path, classes: np.ndarray[Any, Any], cog: bool = True) -> Path:
    profile: dict[str, Any] = {
        "driver": "COG" if cog else "GTiff",
        "width": classes.shape[1],
        "height": classes.shape[0],
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 5000000, 120, 120),
        "nodata": 255,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes.astype(np.uint8), 1)
    return path


def _classes(size: int = 32, top: int = 4) -> np.ndarray[Any, Any]:
    grid = np.random.default_rng(2).integers(0, top + 1, (size, size), dtype=np.uint8)
    grid[:2] = 255
    return grid


def _violation(stage: str, table: pd.DataFrame) -> ContractViolation:
    with pytest.raises(ContractViolation) as info:
        enforce(stage, table)
    assert info.value.stage == stage
    assert f"data contract '{stage}' violated" in str(info.value)
    return info.value


# --------------------------------------------------------------------------- items


def test_items_pass() -> None:
    items = [_item(IDS[0]), _item(IDS[1], props={"eo:cloud_cover": None})]
    result = enforce("items", items_table(items, VARIABLES))
    assert result.success and result.evaluated >= 5 and result.failures == []


def test_items_missing_band_names_item_and_band() -> None:
    items = [_item(IDS[0]), _item(IDS[1], assets=("blue", "green", "red", "scl"))]
    exc = _violation("items", items_table(items, VARIABLES))
    assert "expect_column_values_to_be_in_set" in str(exc)
    assert "missing_bands" in str(exc)
    assert exc.failures[0]["offending"] == {IDS[1]: "nir"}


def test_items_duplicate_id_and_no_crs() -> None:
    items = [_item(IDS[0]), _item(IDS[0], props={"proj:epsg": None})]
    failures = _violation("items", items_table(items, VARIABLES)).failures
    assert {(f["expectation"], f["column"]) for f in failures} == {
        ("expect_column_values_to_be_unique", "id"),
        ("expect_column_values_to_not_be_null", "epsg"),
    }


def test_items_empty_search_fails_on_row_count() -> None:
    exc = _violation("items", items_table([], VARIABLES))
    assert [f["expectation"] for f in exc.failures] == ["expect_table_row_count_to_be_between"]
    assert exc.failures[0]["offending"] == 0


def test_items_table_reads_proj_code_and_mgrs_fields() -> None:
    item = _item(IDS[0], props={"proj:epsg": None, "grid:code": None, "proj:code": "EPSG:32634"})
    item["properties"].update(
        {"mgrs:utm_zone": 34, "mgrs:latitude_band": "T", "mgrs:grid_square": "CR"}
    )
    row = items_table([item], BANDS).iloc[0]
    assert (row["epsg"], row["tile"], row["n_missing_bands"], row["missing_bands"]) == (
        32634,
        "34TCR",
        0,
        "",
    )


# --------------------------------------------------------------------------- cube


def test_cube_pass(tmp_path: Path) -> None:
    table = cube_table(_cube(tmp_path / "cube.zarr"))
    assert len(table) == 2 * len(VARIABLES)
    assert set(table["item_id"]) == set(IDS)
    assert table.loc[table["variable"] == "scl", "role"].eq("label").all()
    assert enforce("cube", table).success


def test_cube_all_nodata_band_fails_naming_the_slice(tmp_path: Path) -> None:
    table = cube_table(_cube(tmp_path / "cube.zarr", blank=("red", 1)))
    exc = _violation("cube", table)
    first = exc.failures[0]
    assert first["expectation"] == "expect_column_values_to_be_between"
    assert first["column"] == "valid_fraction"
    assert first["offending"] == {f"33TWL/{IDS[1]}/red": 0.0}
    assert f"33TWL/{IDS[1]}/red" in str(exc) and "valid_fraction" in str(exc)


def test_cube_reflectance_stored_as_float_scale_fails(tmp_path: Path) -> None:
    table = cube_table(_cube(tmp_path / "cube.zarr"))
    table.loc[table["variable"] == "nir", "mean"] = 0.3  # reflectance 0..1, not DN
    failures = _violation("cube", table).failures
    assert [(f["column"], f["kwargs"]["where"]) for f in failures] == [("mean", {"role": "band"})]


# --------------------------------------------------------------------------- chips


def test_chips_pass(tmp_path: Path) -> None:
    table = chips_table(_chips(tmp_path / "chips.zarr"))
    assert list(table["split"]) == ["train"] * 3 + ["test"] * 2
    assert list(table["tile"]) == ["33TWL"] * 3 + ["33TWM"] * 2
    assert enforce("chips", table).success


def test_chips_too_much_nodata_fails(tmp_path: Path) -> None:
    table = chips_table(_chips(tmp_path / "chips.zarr", nodata_pixels=8))  # 8 of 64 pixels
    exc = _violation("chips", table)
    assert [f["column"] for f in exc.failures] == ["nodata_fraction"]
    assert exc.failures[0]["offending"] == {f"train/1/{IDS[0]}": 0.125}
    assert "expect_column_values_to_be_between" in str(exc) and "0.125" in str(exc)


def test_chips_thresholds_follow_the_run_parameters(tmp_path: Path) -> None:
    table = chips_table(_chips(tmp_path / "chips.zarr", nodata_pixels=8))
    exc = _violation("chips", table)
    assert exc.failures[0]["kwargs"]["max_value"] == 0.05  # file default, filled in the report
    result = enforce("chips", table, parameters={"max_nodata_fraction": 0.2})
    assert result.parameters == {"max_nodata_fraction": 0.2, "min_labelled_fraction": 0.5}
    with pytest.raises(InputError, match=r"no parameter\(s\) \['max_nodata'\]"):
        enforce("chips", table, parameters={"max_nodata": 0.2})


# --------------------------------------------------------------------------- predictions


def test_predictions_pass(tmp_path: Path) -> None:
    tifs = [_tif(tmp_path / f"{i}.tif", _classes()) for i in IDS]
    table = predictions_table(tifs, num_classes=5)
    assert table["is_cog"].all() and table["crs"].eq("EPSG:32633").all()
    assert enforce("predictions", table).success


def test_predictions_class_out_of_range_fails(tmp_path: Path) -> None:
    bad = _classes()
    bad[5, 5] = 9
    tifs = [_tif(tmp_path / f"{IDS[0]}.tif", _classes()), _tif(tmp_path / f"{IDS[1]}.tif", bad)]
    exc = _violation("predictions", predictions_table(tifs, num_classes=5))
    assert [f["expectation"] for f in exc.failures] == [
        "expect_column_pair_values_a_to_be_greater_than_b"
    ]
    assert exc.failures[0]["offending"] == {IDS[1]: [5, 9.0]}


def test_predictions_not_a_cog_fails(tmp_path: Path) -> None:
    tif = _tif(tmp_path / f"{IDS[0]}.tif", _classes(), cog=False)
    exc = _violation("predictions", predictions_table([tif], num_classes=5))
    assert [(f["column"], f["offending"]) for f in exc.failures] == [("is_cog", {IDS[0]: False})]


def test_predictions_all_nodata_fails(tmp_path: Path) -> None:
    tif = _tif(tmp_path / f"{IDS[0]}.tif", np.full((16, 16), 255, np.uint8))
    failures = _violation("predictions", predictions_table([tif], num_classes=5)).failures
    assert [(f["column"], f["offending"]) for f in failures] == [("nodata_fraction", {IDS[0]: 1.0})]


# --------------------------------------------------------------------------- results


def test_result_to_dict_is_strict_json(tmp_path: Path) -> None:
    table = cube_table(_cube(tmp_path / "cube.zarr", blank=("scl", 0)))
    result = validate_table("cube", table)
    assert isinstance(result, ContractResult) and not result.success
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["stage"] == "cube" and payload["rows"] == len(table)
    assert payload["failures"][0]["column"] == "valid_fraction"


def test_missing_column_is_reported_not_raised() -> None:
    table = items_table([_item(IDS[0])], VARIABLES).drop(columns=["tile"])
    result = validate_table("items", table)
    tile_failures = [f for f in result.failures if f["column"] == "tile"]
    assert tile_failures and all("does not exist" in f["offending"] for f in tile_failures)


# --------------------------------------------------------------------------- contract files


def test_shipped_contracts_load() -> None:
    for stage in STAGES:
        contract = load_contract(stage, DEFAULT_CONTRACTS_DIR)
        assert contract.stage == stage and contract.description and contract.expectations


def _write(directory: Path, stage: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stage}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stage: items\nexpectations: [\n", "not valid YAML"),
        ("- just a list\n", "must hold a mapping"),
        ("stage: cube\nexpectations: [{expectation: expect_table_row_count_to_be_between}]\n", "declares stage 'cube'"),
        ("stage: items\nexpectations: []\n", "non-empty 'expectations'"),
        ("stage: items\nexpectations: [{expectation: expect_the_moon, kwargs: {}}]\n", "unknown expectation 'expect_the_moon'"),
        ("stage: items\nexpectations: [{expectation: expect_column_values_to_be_unique, kwarg: {column: id}}]\n", "unknown key(s) ['kwarg']"),
        ("stage: items\nexpectations: [{expectation: expect_column_values_to_be_in_set, kwargs: {column: id}}]\n", "invalid kwargs"),
        ("stage: items\nexpectations: [{expectation: expect_column_max_to_be_between, kwargs: {column: epsg, max_value: {$PARAMETER: top}}}]\n", "undeclared parameter(s) ['top']"),
    ],
)  # fmt: skip
def test_malformed_contract_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path / "contracts", "items", text)
    with pytest.raises(InputError) as info:
        validate_table("items", items_table([_item(IDS[0])], BANDS), path.parent)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_missing_contract_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no data contract for stage 'labels'"):
        load_contract("labels", tmp_path)


def test_env_var_overrides_directory_and_where_accepts_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        tmp_path,
        "items",
        "stage: items\n"
        "expectations:\n"
        "  - expectation: expect_column_values_to_be_between\n"
        "    kwargs: {column: cloud_cover, max_value: 20, mostly: 0.5}\n"
        "    where: {tile: [33TWL, 33TWM]}\n",
    )
    monkeypatch.setenv("EOFORGE_CONTRACTS_DIR", str(tmp_path))
    assert resolve_contracts_dir() == tmp_path
    cloudy = [_item(IDS[0]), _item(IDS[1], props={"eo:cloud_cover": 90.0})]
    assert validate_table("items", items_table(cloudy, BANDS)).success  # 1 of 2 within `mostly`
    other_tile = _item(
        "S2A_34TCR_20230815_0_L2A", props={"eo:cloud_cover": 90.0, "grid:code": "MGRS-34TCR"}
    )
    assert validate_table("items", items_table([*cloudy, other_tile], BANDS)).success
    very_cloudy = [_item(i, props={"eo:cloud_cover": 90.0}) for i in IDS]
    assert not validate_table("items", items_table(very_cloudy, BANDS)).success


# --------------------------------------------------------------------------- real sample


def test_real_sample_passes_every_contract(
    real_items: list[dict[str, Any]], real_cube: Path, tmp_path: Path
) -> None:
    """The bundled real Sentinel-2 sample, through the real stages, meets every contract."""
    from eoforge.chips.cut import build_chips
    from eoforge.config import RunSpec
    from eoforge.inference.cog import write_prediction

    spec = RunSpec()
    assert enforce("items", items_table(real_items, VARIABLES)).success
    assert enforce("cube", cube_table(real_cube)).success
    chips = build_chips(real_cube, tmp_path / "chips.zarr", spec.chips, spec.labels, BANDS)
    limits = {
        "max_nodata_fraction": spec.chips.max_nodata_fraction,
        "min_labelled_fraction": spec.chips.min_labelled_fraction,
    }
    assert enforce("chips", chips_table(chips.path), parameters=limits).success
    tif = tmp_path / f"{real_items[0]['id']}.tif"
    write_prediction(_classes(512), "EPSG:32633", [120, 0, 500000, 0, -120, 5000000], tif)
    assert enforce("predictions", predictions_table([tif], num_classes=5)).success


# --------------------------------------------------------------------------- forked processes


def _in_child(fn: Any, timeout_s: float) -> str:
    """Fork, run ``fn`` in the child; "finished", "failed", or "hung" (killed at ``timeout_s``)."""
    import os
    import signal
    import time

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "finished" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def test_a_child_killed_inside_validation_does_not_hang_later_forks() -> None:
    """GX draws (disabled) tqdm bars, and tqdm's default write lock includes a multiprocessing
    lock, a semaphore that forked children share: a run killed while holding it (SIGKILL, a
    cancelled run in a forked engine) left it held, and every later forked validation blocked
    forever (seen in the SIGKILL fault test)."""
    import os
    import signal

    from tqdm.auto import tqdm

    table = items_table([_item(i) for i in IDS], VARIABLES)
    assert enforce("items", table).success  # the parent has validated: tqdm's lock exists

    def die_holding_the_progress_lock() -> None:
        assert enforce("items", table).success
        tqdm.get_lock().acquire()
        os.kill(os.getpid(), signal.SIGKILL)

    assert _in_child(die_holding_the_progress_lock, 30) == "failed"
    assert _in_child(lambda: enforce("items", table), 30) == "finished"
