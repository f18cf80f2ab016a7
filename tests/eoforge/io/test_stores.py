"""Cube and chip stores on s3:// through s3fs, against a real moto_server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eoforge_test_helpers import BANDS, write_tiny_cube  # type: ignore[import-not-found]

from eoforge.chips.cut import build_chips, read_split
from eoforge.chips.index import read_chip_index
from eoforge.chips.torch_data import chip_loader
from eoforge.config import ChipSpec, LabelSpec
from eoforge.errors import InputError
from eoforge.io.stores import open_group, staged_store
from eoforge.labels.polygons import read_label_file

pytestmark = pytest.mark.e2e

BUCKET = "eoforge-test"
SPEC = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))


@pytest.fixture(scope="module")
def s3(moto_server: str) -> dict[str, Any]:
    """storage_options of a fresh moto_server with one bucket; the server stops at teardown."""
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_server, "region_name": "us-east-1"},
    }
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.call_s3("create_bucket", Bucket=BUCKET)
    return options


def _fs(options: dict[str, Any]) -> Any:
    import s3fs

    return s3fs.S3FileSystem(**options, skip_instance_cache=True)


@pytest.fixture(scope="module")
def cubes(s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same tiny cube locally and uploaded to the bucket."""
    local = write_tiny_cube(tmp_path_factory.mktemp("s3") / "cube.zarr")
    _fs(s3).put(str(local), f"{BUCKET}/run/cube.zarr", recursive=True)
    return local, f"s3://{BUCKET}/run/cube.zarr"


@pytest.fixture(scope="module")
def remote_chips(s3: dict[str, Any], cubes: tuple[Path, str]) -> str:
    """A chip store built from the S3 cube into the bucket."""
    remote = f"s3://{BUCKET}/run/chips.zarr"
    build_chips(cubes[1], remote, SPEC, LabelSpec(), BANDS, storage_options=s3)
    return remote


def test_chips_from_s3_to_s3_equal_a_local_build(
    s3: dict[str, Any], cubes: tuple[Path, str], remote_chips: str, tmp_path: Path
) -> None:
    local = build_chips(cubes[0], tmp_path / "chips.zarr", SPEC, LabelSpec(), BANDS)
    counts = {}
    for split in ("train", "val", "test"):
        x_remote, y_remote = read_split(remote_chips, split, storage_options=s3)
        x_local, y_local = read_split(local.path, split)
        assert np.array_equal(x_remote, x_local) and np.array_equal(y_remote, y_local)
        counts[split] = len(x_remote)
    assert counts == local.counts
    index = read_chip_index(remote_chips, s3)
    assert len(index) == sum(counts.values())
    assert _fs(s3).exists(f"{BUCKET}/run/chips-index.parquet")
    assert not [p for p in _fs(s3).ls(f"{BUCKET}/run") if ".staging-" in p]


def test_loader_reads_s3_with_workers(s3: dict[str, Any], remote_chips: str) -> None:
    x_all, _ = read_split(remote_chips, "train", storage_options=s3)
    batches = list(chip_loader(remote_chips, "train", batch_size=8, seed=1, storage_options=s3))
    assert sum(len(x) for x, _ in batches) == len(x_all)
    forked = list(
        chip_loader(remote_chips, "train", batch_size=8, seed=1, num_workers=2, storage_options=s3)
    )
    for (xa, ya), (xb, yb) in zip(batches, forked, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_rebuild_replaces_and_failure_keeps_the_store(
    s3: dict[str, Any], cubes: tuple[Path, str]
) -> None:
    remote = f"s3://{BUCKET}/run/replace.zarr"
    with staged_store(remote, s3) as staging:  # an older store to replace
        open_group(staging, "w", s3).attrs["chip_size"] = 99
    assert open_group(remote, "r", s3).attrs["chip_size"] == 99
    smaller = SPEC.model_copy(update={"size": 8, "stride": 8})
    build_chips(cubes[1], remote, smaller, LabelSpec(), BANDS, storage_options=s3)
    assert open_group(remote, "r", s3).attrs["chip_size"] == 8
    with pytest.raises(RuntimeError, match="boom"), staged_store(remote, s3) as staging:
        open_group(staging, "w", s3).attrs["chip_size"] = 99
        raise RuntimeError("boom")
    assert open_group(remote, "r", s3).attrs["chip_size"] == 8
    assert read_split(remote, "test", storage_options=s3)[0].shape[-1] == 8
    assert not [p for p in _fs(s3).ls(f"{BUCKET}/run") if ".staging-" in p]
    with pytest.raises(InputError, match="does not exist"):
        open_group(f"s3://{BUCKET}/run/missing.zarr", "r", s3)


def test_vector_labels_from_s3(s3: dict[str, Any], tmp_path: Path) -> None:
    import geopandas as gpd
    import shapely

    frame = gpd.GeoDataFrame({"class": ["water"]}, geometry=[shapely.box(0, 0, 1, 1)], crs=4326)
    frame.to_parquet(tmp_path / "l.parquet")
    _fs(s3).put(str(tmp_path / "l.parquet"), f"{BUCKET}/labels/l.parquet")
    got = read_label_file(f"s3://{BUCKET}/labels/l.parquet", s3)
    assert list(got["class"]) == ["water"] and got.crs.to_epsg() == 4326
    with pytest.raises(InputError, match="does not exist"):
        read_label_file(f"s3://{BUCKET}/labels/none.parquet", s3)
