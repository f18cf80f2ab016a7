"""The chip index: contents, footprints, staleness check and its data contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from eoforge_test_helpers import write_tiny_cube  # type: ignore[import-not-found]
from pyproj import Transformer

from eoforge.chips.cut import build_chips
from eoforge.chips.index import (
    chip_index_table,
    chip_index_uri,
    cross_split_overlaps,
    enforce_chip_index,
    read_chip_index,
)
from eoforge.config import ChipSpec, LabelSpec
from eoforge.errors import ContractViolation, InputError

BANDS = ("blue", "green", "red", "nir")


@pytest.fixture
def chips(tmp_path: Path) -> Path:
    write_tiny_cube(
        tmp_path / "cube.zarr", origin=(500_000.0, 5_000_000.0), times=("2023-08-10", "2023-08-15")
    )
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    build_chips(tmp_path / "cube.zarr", tmp_path / "chips.zarr", spec, LabelSpec(), BANDS)
    return tmp_path / "chips.zarr"


def test_index_rows_match_the_store(chips: Path) -> None:
    import zarr

    index = read_chip_index(chips)
    assert chip_index_uri(chips) == str(chips.parent / "chips-index.parquet")
    assert index.crs.to_epsg() == 4326
    root = zarr.open_group(str(chips), mode="r")
    for split in ("train", "val", "test"):
        rows = index[index["split"] == split].sort_values("index")
        origin = np.asarray(root[split]["origin"][...])
        y = np.asarray(root[split]["y"][...])
        assert len(rows) == len(origin)
        assert np.array_equal(rows[["time_index", "row", "col"]].to_numpy(), origin)
        assert list(rows["item_id"]) == list(root[split].attrs["item_ids"])
        assert np.array_equal(rows["px_water"].to_numpy(), (y == 2).sum(axis=(1, 2)))
        assert np.array_equal(rows["px_ignore"].to_numpy(), (y == 255).sum(axis=(1, 2)))
    assert str(index["datetime"].iloc[0]).startswith("2023-08-1")
    # footprints: the tile-CRS bounds, reprojected corner by corner
    row = index.iloc[0]
    assert row.x_max - row.x_min == 16 * 120 and row.y_max - row.y_min == 16 * 120
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(
        (row.x_min + row.x_max) / 2, (row.y_min + row.y_max) / 2
    )
    assert row.geometry.contains(shapely.Point(lon, lat))


def test_cross_split_overlaps() -> None:
    def frame(rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "split": [r[0] for r in rows],
                "x_min": [r[1] for r in rows],
                "y_min": [r[2] for r in rows],
                "x_max": [r[1] + 10 for r in rows],
                "y_max": [r[2] + 10 for r in rows],
                "tile_crs": [r[3] for r in rows],
            }
        )

    touching = frame([("train", 0, 0, "EPSG:32633"), ("test", 10, 0, "EPSG:32633")])
    assert cross_split_overlaps(touching).tolist() == [0, 0]
    same_split = frame([("train", 0, 0, "EPSG:32633"), ("train", 5, 5, "EPSG:32633")])
    assert cross_split_overlaps(same_split).tolist() == [0, 0]
    leak = frame(
        [("train", 0, 0, "EPSG:32633"), ("test", 9, 9, "EPSG:32633"), ("val", 5, 0, "EPSG:32633")]
    )
    assert cross_split_overlaps(leak).tolist() == [2, 2, 2]


def test_stale_index_is_detected(chips: Path) -> None:
    index_file = Path(chip_index_uri(chips))
    data = index_file.read_bytes()
    index_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(InputError, match="does not belong"):
        read_chip_index(chips)
    index_file.unlink()
    with pytest.raises(InputError, match="does not exist"):
        read_chip_index(chips)


def test_contract_passes_on_a_real_build_and_catches_leaks(chips: Path) -> None:
    result = enforce_chip_index(chips, {"max_nodata_fraction": 0.05, "min_labelled_fraction": 0.5})
    assert result.success and result.rows > 0
    from eoforge.contracts.validation import enforce

    table = chip_index_table(read_chip_index(chips))
    leaked = table.copy()
    leaked.loc[leaked.index[0], "n_overlaps_other_split"] = 3
    leaked.loc[leaked.index[1], "hist_total"] = 1
    leaked.loc[leaked.index[2], "labelled_fraction"] = 0.0
    with pytest.raises(ContractViolation) as err:
        enforce("chip_index", leaked)
    text = str(err.value)
    assert "n_overlaps_other_split" in text and "hist_total" in text and "labelled_fraction" in text
