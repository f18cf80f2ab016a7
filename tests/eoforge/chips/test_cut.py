from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from eoforge_test_helpers import WholeTilesOnly  # type: ignore[import-not-found]
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.chips.cut import ChipsInfo, build_chips, grid_origins, read_split
from eoforge.config import ChipSpec, LabelSpec, SamplingSpec
from eoforge.errors import InputError
from eoforge.labels.classes import CubeClassMap

BANDS = ("blue", "green", "red", "nir")


def _tiny_cube(
    path: Path, tiles: dict[str, int], size: int = 64, nodata_rows: int = 0, chunk_rows: int = 0
) -> None:
    rng = np.random.default_rng(0)
    for i, (tile, t) in enumerate(tiles.items()):
        x0 = i * (size + 10) * 120.0  # tiles side by side: no shared ground
        data = {
            b: (("time", "y", "x"), rng.integers(1, 5000, (t, size, size), dtype=np.uint16))
            for b in BANDS
        }
        scl = rng.choice(np.array([3, 4, 5, 6, 8, 9], np.uint8), (t, size, size))
        if nodata_rows:
            data["blue"][1][:, :nodata_rows, :] = 0
        data["scl"] = (("time", "y", "x"), scl)
        ds = xr.Dataset(
            data,
            coords={
                "time": np.arange(t).astype("datetime64[D]"),
                "y": np.arange(size),
                "x": np.arange(size),
            },
            attrs={
                "crs": "EPSG:32633",
                "transform": [120.0, 0.0, x0, 0.0, -120.0, 0.0],
                "item_ids": [f"S2A_{tile}_2023080{i}_0_L2A" for i in range(t)],
                "tile": tile,
            },
        )
        if chunk_rows:  # several chunk rows: what is read a strip at a time
            ds = ds.chunk({"time": 1, "y": chunk_rows, "x": size})
        ds.to_zarr(path, group=tile, mode="w-", zarr_format=3, consolidated=False)


def test_grid_and_bad_sizes() -> None:
    assert grid_origins(64, 64, 32, 32) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert len(grid_origins(64, 64, 32, 16)) == 9
    with pytest.raises(InputError, match="larger than the scene"):
        grid_origins(64, 64, 65, 65)


def test_splits_by_tile_and_block(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    spec = ChipSpec(
        size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",), val_fraction=0.25
    )
    info = build_chips(cube, tmp_path / "chips.zarr", spec, LabelSpec(), BANDS)
    assert info.counts == {"train": 2 * 12, "val": 2 * 4, "test": 16}
    g = zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")
    assert g.attrs["bands"] == list(BANDS) and len(g.attrs["band_mean"]) == 4
    assert g["train"].attrs["tiles"] == ["AAA"] and g["test"].attrs["tiles"] == ["BBB"]
    tr = np.asarray(g["train"]["origin"][...])
    va = np.asarray(g["val"]["origin"][...])
    assert tr[:, 2].max() + 16 <= va[:, 2].min()
    x, y = read_split(tmp_path / "chips.zarr", "test")
    assert x.shape == (16, 4, 16, 16) and y.shape == (16, 16, 16) and x.dtype == np.uint16


def test_nodata_filter_and_nothing_left(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1, "BBB": 1}, nodata_rows=16)
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    info = build_chips(cube, tmp_path / "c.zarr", spec, LabelSpec(), BANDS)
    assert info.rejected["nodata"] == 8  # the top chip row of both tiles
    with pytest.raises(InputError, match="no train chip survived"):
        build_chips(
            cube,
            tmp_path / "d.zarr",
            spec.model_copy(update={"min_labelled_fraction": 1.0}),
            LabelSpec(scl_groups={"vegetation": (4,)}),
            BANDS,
        )
    assert not (tmp_path / "d.zarr").exists()


def test_unknown_tile_named(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1})
    with pytest.raises(InputError, match="ZZZ"):
        build_chips(
            cube,
            tmp_path / "c.zarr",
            ChipSpec(train_tiles=("AAA",), test_tiles=("ZZZ",)),
            LabelSpec(),
            BANDS,
        )


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(32, 200),
    size=st.integers(4, 32),
    stride_div=st.integers(1, 4),
    val_fraction=st.floats(0.05, 0.9),
)
def test_train_and_val_never_overlap(
    width: int, size: int, stride_div: int, val_fraction: float
) -> None:
    from eoforge.chips.cut import _split_of

    spec = ChipSpec(
        size=size,
        stride=max(1, size // stride_div),
        train_tiles=("A",),
        test_tiles=("B",),
        val_fraction=val_fraction,
    )
    cols = {"train": [], "val": []}  # type: dict[str, list[int]]
    for _, c in grid_origins(size, width, size, spec.stride):
        s = _split_of("A", c, size, width, spec)
        if s:
            cols[s].append(c)
    if cols["train"] and cols["val"]:
        assert max(cols["train"]) + size <= min(cols["val"])


# --------------------------------------------------------------------------- chip store v2


def _build(cube: Path, out: Path, **kw: object) -> ChipsInfo:
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    return build_chips(cube, out, spec, LabelSpec(), BANDS, **kw)  # type: ignore[arg-type]


def test_store_layout_is_adr_compatible_and_chunked(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    info = _build(cube, tmp_path / "chips.zarr")
    g = zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")
    attrs = dict(g.attrs)
    for key in ("bands", "classes", "ignore_index", "chip_size", "band_mean", "band_std"):
        assert key in attrs
    assert attrs["chip_store_version"] == 2 and attrs["chunk_chips"] == 16
    assert attrs["index"] == "chips-index.parquet" and len(attrs["index_sha256"]) == 64
    assert attrs["sampling"]["method"] == "grid" and attrs["label_source"] == "cube variable 'scl'"
    x, y, origin = g["train"]["x"], g["train"]["y"], g["train"]["origin"]
    assert x.dtype == np.uint16 and y.dtype == np.uint8 and origin.dtype == np.int32
    assert x.shape == (24, 4, 16, 16) and x.chunks == (16, 4, 16, 16) and x.shards is None
    assert len(g["train"].attrs["item_ids"]) == 24
    assert info.index_path == str(tmp_path / "chips-index.parquet")
    sharded = _build(cube, tmp_path / "sharded.zarr", chunk_chips=4, shard_chips=16)
    s = zarr.open_group(str(sharded.path), mode="r")["train"]["x"]
    assert s.chunks == (4, 4, 16, 16) and s.shards == (16, 4, 16, 16)
    assert np.array_equal(read_split(sharded.path, "train")[0], read_split(info.path, "train")[0])
    with pytest.raises(InputError, match="multiple"):
        _build(cube, tmp_path / "bad.zarr", chunk_chips=4, shard_chips=10)


def test_rebuild_is_byte_identical(tmp_path: Path) -> None:
    from eoforge.io.atomic import sha256_file, sha256_tree

    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    _build(
        cube,
        tmp_path / "a" / "chips.zarr",
        sampling=SamplingSpec(method="random", chips_per_tile=20),
    )
    _build(
        cube,
        tmp_path / "b" / "chips.zarr",
        sampling=SamplingSpec(method="random", chips_per_tile=20),
    )
    assert sha256_tree(tmp_path / "a" / "chips.zarr") == sha256_tree(tmp_path / "b" / "chips.zarr")
    assert sha256_file(tmp_path / "a" / "chips-index.parquet") == sha256_file(
        tmp_path / "b" / "chips-index.parquet"
    )


def test_store_holds_chips_in_seeded_random_order(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    _build(cube, tmp_path / "chips.zarr")
    origin = np.asarray(
        zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")["test"]["origin"][...]
    )
    keys = [tuple(o) for o in origin.tolist()]
    assert keys != sorted(keys) and len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingSpec(),
        SamplingSpec(method="random", chips_per_tile=30),
        SamplingSpec(method="balanced", chips_per_tile=30),
        SamplingSpec(split="block", block_size=16, test_fraction=0.25),
    ],
    ids=["grid", "random", "balanced", "block"],
)
def test_samplers_through_build_chips(tmp_path: Path, sampling: SamplingSpec) -> None:
    from eoforge.chips.index import cross_split_overlaps, read_chip_index

    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1})
    info = _build(cube, tmp_path / "chips.zarr", sampling=sampling)
    assert info.counts["train"] > 0 and info.counts["test"] > 0
    index = read_chip_index(tmp_path / "chips.zarr")
    assert len(index) == sum(info.counts.values())
    assert not cross_split_overlaps(index).any()
    assert set(index["split"]) <= {"train", "val", "test"}
    tiles = {split: set(index[index.split == split].tile) for split in ("train", "test")}
    if sampling.split == "block":  # blocks of both tiles feed the train and the test split
        assert tiles == {"train": {"AAA", "BBB"}, "test": {"AAA", "BBB"}}
    else:  # tile split: the test tile holds its ground alone
        assert "BBB" not in tiles["train"] and tiles["test"] == {"BBB"}


@pytest.mark.parametrize(
    "sampling",
    [SamplingSpec(), SamplingSpec(method="balanced", chips_per_tile=30)],
    ids=["grid", "balanced"],
)
def test_labels_by_rows_give_the_chips_of_whole_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampling: SamplingSpec
) -> None:
    import eoforge.chips.cut as cut
    import eoforge.cube.tiles as tiles

    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 2, "BBB": 1}, size=96, nodata_rows=5, chunk_rows=24)
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    whole = build_chips(
        cube, tmp_path / "whole.zarr", spec, LabelSpec(), BANDS, sampling=sampling,
        label_source=WholeTilesOnly(CubeClassMap("scl")),
    )  # fmt: skip
    read_whole = tiles.CubeTile.variable

    def no_whole_scl(self: tiles.CubeTile, name: str) -> np.ndarray:
        assert name != "scl", "the labels' codes were read whole"
        return read_whole(self, name)

    def no_whole_labels(*args: object) -> np.ndarray:
        raise AssertionError("the tile's labels were made whole")

    monkeypatch.setattr(tiles.CubeTile, "variable", no_whole_scl)
    monkeypatch.setattr(cut, "tile_labels", no_whole_labels)
    rows = build_chips(cube, tmp_path / "rows.zarr", spec, LabelSpec(), BANDS, sampling=sampling)
    assert rows.counts == whole.counts and rows.rejected == whole.rejected
    for split in ("train", "val", "test"):
        a, b = read_split(tmp_path / "whole.zarr", split), read_split(tmp_path / "rows.zarr", split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_overlapping_tiles_give_their_ground_to_the_test_tile(tmp_path: Path) -> None:
    """Tiles at the same place: the train tile keeps only ground the test tile lacks."""
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1, "BBB": 1}, size=64)
    g = zarr.open_group(str(cube), mode="r+")
    g["AAA"].attrs["transform"] = [120.0, 0.0, 32 * 120.0, 0.0, -120.0, 0.0]
    g["BBB"].attrs["transform"] = [120.0, 0.0, 0.0, 0.0, -120.0, 0.0]  # overlaps AAA's west half
    info = _build(cube, tmp_path / "chips.zarr")
    assert info.rejected["overlap"] > 0
    tr = np.asarray(zarr.open_group(str(tmp_path / "chips.zarr"), mode="r")["train"]["origin"][...])
    assert tr[:, 2].min() >= 32  # AAA columns 0..31 lie under BBB


def test_labels_are_ignored_where_the_input_has_no_data(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1, "BBB": 1})
    g = zarr.open_group(str(cube), mode="r+")
    blue = np.asarray(g["BBB"]["blue"][...])
    blue[0, 0, :] = 0  # one nodata row, under the filter threshold
    g["BBB"]["blue"][...] = blue
    _build(cube, tmp_path / "chips.zarr")
    x, y = read_split(tmp_path / "chips.zarr", "test")
    assert ((x == 0).any(axis=1) <= (y == 255)).all()


def test_cloud_filter_and_temporal_split(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 3, "BBB": 3})
    spec = ChipSpec(
        size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",), min_labelled_fraction=0
    )
    info = build_chips(
        cube, tmp_path / "c.zarr", spec, LabelSpec(), BANDS,
        sampling=SamplingSpec(test_from="1970-01-02"),
    )  # fmt: skip
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert set(np.asarray(g["train"]["origin"][:, 0]).tolist()) == {0}  # day 0 only
    assert set(np.asarray(g["test"]["origin"][:, 0]).tolist()) == {1, 2}
    assert info.rejected["temporal"] == 16 * 3
    # the tiny cube is a third cloud (SCL 8, 9): a strict cloud filter removes every chip
    with pytest.raises(InputError, match="no train chip survived"):
        build_chips(
            cube, tmp_path / "d.zarr", spec, LabelSpec(), BANDS,
            sampling=SamplingSpec(max_cloud_fraction=0.1),
        )  # fmt: skip
    loose = build_chips(
        cube, tmp_path / "e.zarr", spec, LabelSpec(), BANDS,
        sampling=SamplingSpec(max_cloud_fraction=0.5),
    )  # fmt: skip
    assert sum(loose.counts.values()) == 2 * 16 * 3 and loose.rejected["cloud"] == 0


def test_failed_build_keeps_the_previous_store(tmp_path: Path) -> None:
    cube = tmp_path / "cube.zarr"
    _tiny_cube(cube, {"AAA": 1, "BBB": 1})
    _build(cube, tmp_path / "chips.zarr")
    before = read_split(tmp_path / "chips.zarr", "train")[0]
    with pytest.raises(InputError):
        _build(cube, tmp_path / "chips.zarr", label_var="blue")  # codes out of the LUT -> ignore
    assert np.array_equal(read_split(tmp_path / "chips.zarr", "train")[0], before)
    with pytest.raises(InputError, match="not one of"):
        read_split(tmp_path / "chips.zarr", "holdout")


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp directory the spill goes to (``tempfile.tempdir``), and a two-tile cube."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    _tiny_cube(tmp_path / "cube.zarr", {"AAA": 1, "BBB": 1})
    return folder


def test_build_chips_leaves_no_spill_behind_even_when_it_fails(
    tmp_path: Path, scratch: Path
) -> None:
    cube = tmp_path / "cube.zarr"
    spec = ChipSpec(size=16, stride=8, train_tiles=("AAA",), test_tiles=("BBB",))
    info = build_chips(cube, tmp_path / "c.zarr", spec, LabelSpec(), BANDS)
    assert info.counts["train"] > 0 and not list(scratch.iterdir())
    with pytest.raises(InputError, match="no train chip survived"):
        build_chips(
            cube, tmp_path / "d.zarr", spec.model_copy(update={"min_labelled_fraction": 1.0}),
            LabelSpec(scl_groups={"vegetation": (4,)}), BANDS,
        )  # fmt: skip
    assert not list(scratch.iterdir()) and not (tmp_path / "d.zarr").exists()


def test_a_full_disk_for_the_spill_is_a_clear_error(
    tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    cube = tmp_path / "cube.zarr"
    spec = ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",))
    with pytest.raises(InputError, match=r"no room for .* spill file .*TMPDIR"):
        build_chips(cube, tmp_path / "c.zarr", spec, LabelSpec(), BANDS)
    assert not list(scratch.iterdir()) and not (tmp_path / "c.zarr").exists()
