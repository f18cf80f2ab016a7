"""Samplers and splits: grid / random / balanced, filters, and the no-overlap guarantee."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.chips.masks import PackedMask
from eoforge.chips.sampling import TileSample, WindowCounts, sample_tile
from eoforge.chips.splits import COVERED, NO_SPLIT, assign_blocks, split_regions, temporal_mask
from eoforge.config import ChipSpec, SamplingSpec
from eoforge.cube.grid import TileGrid, exclude_covered
from eoforge.errors import InputError

IGNORE = 255


def _labels(rng: np.random.Generator, t: int, h: int, w: int, k: int = 4) -> np.ndarray:
    y = rng.integers(0, k, (t, h, w)).astype(np.uint8)
    y[rng.random((t, h, w)) < 0.1] = IGNORE
    return y


def _occupancy(sample: TileSample, size: int, h: int, w: int) -> np.ndarray:
    """Per split, how many chips cover each pixel (any time slice)."""
    occ = np.zeros((3, h, w), dtype=np.int32)
    for s, r, c in zip(sample.split, sample.r, sample.c, strict=True):
        occ[s, r : r + size, c : c + size] += 1
    return occ


def _spec(**kw: object) -> ChipSpec:
    base: dict[str, object] = {
        "train_tiles": ("A",),
        "test_tiles": ("B",),
        "min_labelled_fraction": 0.0,
    }
    return ChipSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_grid_sampler_matches_the_regular_grid() -> None:
    rng = np.random.default_rng(0)
    y = _labels(rng, 2, 64, 64)
    nodata = np.zeros_like(y, dtype=bool)
    spec = _spec(size=16, stride=8, val_fraction=0.25)
    region = split_regions("A", 64, 64, spec, SamplingSpec())
    s = sample_tile(y, nodata, region, spec, SamplingSpec(), IGNORE, 4)
    # stride 8 on 64 px: 7 x 7 windows; val block = cols >= 48: train needs c + 16 <= 48
    assert len(s) == 2 * 7 * (5 + 1)
    assert s.rejected["boundary"] == 2 * 7 * 1  # c = 40 straddles the block boundary
    assert set(s.c[s.split == 0]) == {0, 8, 16, 24, 32} and set(s.c[s.split == 1]) == {48}
    assert list(s.t) == sorted(s.t)


def test_filters_name_their_reason() -> None:
    y = np.zeros((1, 32, 32), np.uint8)
    nodata = np.zeros_like(y, dtype=bool)
    nodata[0, :16, :16] = True  # chip (0, 0) is all nodata
    y[0, :16, 16:] = IGNORE  # chip (0, 16) unlabelled
    cloud = np.zeros_like(nodata)
    cloud[0, 16:, :16] = True  # chip (16, 0) all cloud
    spec = _spec(size=16, stride=16, val_fraction=0.0, min_labelled_fraction=0.5)
    sampling = SamplingSpec(max_cloud_fraction=0.5)
    region = split_regions("A", 32, 32, spec, sampling)
    s = sample_tile(y, nodata, region, spec, sampling, IGNORE, 2, cloud=cloud)
    assert list(zip(s.r, s.c, strict=True)) == [(16, 16)]
    assert s.rejected == {
        "boundary": 0, "overlap": 0, "temporal": 0, "nodata": 1, "unlabelled": 1, "cloud": 1,
    }  # fmt: skip
    assert s.cloud_fraction[0] == 0.0 and s.labelled_fraction[0] == 1.0
    with pytest.raises(InputError, match="no cloud mask"):
        sample_tile(y, nodata, region, spec, sampling, IGNORE, 2)


def test_a_chip_needs_one_labelled_pixel_even_without_a_threshold() -> None:
    y = np.full((1, 16, 16), IGNORE, np.uint8)
    spec = _spec(size=16, stride=16, val_fraction=0.0, min_labelled_fraction=0.0)
    region = split_regions("A", 16, 16, spec, SamplingSpec())
    s = sample_tile(y, np.zeros_like(y, dtype=bool), region, spec, SamplingSpec(), IGNORE, 2)
    assert len(s) == 0 and s.rejected["unlabelled"] == 1


def test_random_sampler_is_seeded_and_distinct() -> None:
    rng = np.random.default_rng(1)
    y = _labels(rng, 3, 80, 80)
    nodata = np.zeros_like(y, dtype=bool)
    spec = _spec(size=8, val_fraction=0.25)
    sampling = SamplingSpec(method="random", chips_per_tile=120, seed=7)
    region = split_regions("A", 80, 80, spec, sampling)
    a = sample_tile(y, nodata, region, spec, sampling, IGNORE, 4, seed=(0,))
    b = sample_tile(y, nodata, region, spec, sampling, IGNORE, 4, seed=(0,))
    c = sample_tile(y, nodata, region, spec, sampling, IGNORE, 4, seed=(1,))
    assert len(a) == 120
    assert np.array_equal(a.t, b.t) and np.array_equal(a.r, b.r) and np.array_equal(a.c, b.c)
    assert not (np.array_equal(a.r, c.r) and np.array_equal(a.c, c.c))
    keys = set(zip(a.t, a.r, a.c, strict=True))
    assert len(keys) == 120  # no window twice
    assert {0, 1} == set(a.split)  # both regions of the train tile get chips


def test_balanced_sampler_favours_rare_classes() -> None:
    y = np.zeros((2, 96, 96), np.uint8)
    y[:, 40:46, 10:16] = 1  # a rare class in one small patch
    y[:, 70:90, 60:90] = 2
    nodata = np.zeros_like(y, dtype=bool)
    spec = _spec(size=16, val_fraction=0.0)
    random = SamplingSpec(method="random", chips_per_tile=60, seed=3)
    balanced = SamplingSpec(method="balanced", chips_per_tile=60, seed=3, min_class_fraction=0.02)
    region = split_regions("A", 96, 96, spec, random)

    def share(s: TileSample) -> float:
        from eoforge.chips.cut import gather_windows

        chips = gather_windows(y, s.t, s.r, s.c, 16)
        return float(((chips == 1).sum(axis=(1, 2)) >= 6).mean())

    r = sample_tile(y, nodata, region, spec, random, IGNORE, 3)
    b = sample_tile(y, nodata, region, spec, balanced, IGNORE, 3)
    assert len(b) == 60
    assert share(b) >= 0.3 > share(r)  # ~1/3 of balanced chips hold the rare class


def test_block_assignment_is_exact_and_checked() -> None:
    blocks = assign_blocks({"A": (100, 100), "B": (100, 40)}, 20, 0.2, 0.3, seed=0)
    codes = np.concatenate([b.ravel() for b in blocks.values()])
    assert blocks["A"].shape == (5, 5) and blocks["B"].shape == (5, 2)
    assert (codes == 2).sum() == round(35 * 0.3) and (codes == 1).sum() == round(35 * 0.2)
    assert np.array_equal(codes, np.concatenate([b.ravel() for b in assign_blocks({"A": (100, 100), "B": (100, 40)}, 20, 0.2, 0.3, seed=0).values()]))  # fmt: skip
    with pytest.raises(InputError, match="cannot hold"):
        assign_blocks({"A": (40, 40)}, 20, 0.5, 0.5, seed=0)


def test_temporal_mask() -> None:
    times = np.array(["2023-08-10", "2023-08-15", "2023-08-20"], dtype="datetime64[ns]")
    allowed = temporal_mask(times, SamplingSpec(test_from=date(2023, 8, 15)), "A")
    assert allowed.tolist() == [[True, False, False], [True, False, False], [False, True, True]]
    assert temporal_mask(times, SamplingSpec(), "A").all()
    with pytest.raises(InputError, match="no acquisition times"):
        temporal_mask(
            np.array(["NaT"], dtype="datetime64[ns]"), SamplingSpec(test_from=date(2023, 1, 1)), "A"
        )


def test_window_counts_direct_and_summed_area_agree() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((2, 30, 40)) < 0.3
    t, r, c = rng.integers(0, 2, 500), rng.integers(0, 23, 500), rng.integers(0, 33, 500)
    brute = np.array([mask[a, b : b + 8, d : d + 8].sum() for a, b, d in zip(t, r, c, strict=True)])
    few = WindowCounts(8)
    few.add("m", mask)
    assert np.array_equal(few.count("m", t[:3], r[:3], c[:3]), brute[:3])  # direct
    assert np.array_equal(few.count("m", t, r, c), brute)  # summed-area table
    assert "m" in few._tables


@pytest.mark.parametrize("depth", [None, 3])
def test_window_counts_of_a_large_mask_use_bounded_row_bands(
    monkeypatch: pytest.MonkeyPatch, depth: int | None
) -> None:
    import eoforge.chips.sampling as sampling

    monkeypatch.setattr(sampling, "TABLE_BYTES", 4 * 8 * 41)  # "large": bands of 24 rows (4 s)
    rng = np.random.default_rng(5)
    shape = (61, 40) if depth is None else (depth, 61, 40)
    values = rng.integers(0, 3, shape, dtype=np.uint8)
    n = 3000  # many windows: more pixels than the mask, every band boundary crossed
    r, c = rng.integers(0, 61 - 6 + 1, n), rng.integers(0, 40 - 6 + 1, n)
    t = None if depth is None else rng.integers(0, depth, n)
    brute = np.array(
        [
            ((values if t is None else values[t[i]])[r[i] : r[i] + 6, c[i] : c[i] + 6] == 1).sum()
            for i in range(n)
        ]
    )
    counts = WindowCounts(6)
    counts.add_comparison("m", values, "eq", 1)
    assert np.array_equal(counts.count("m", t, r, c), brute)
    assert "m" not in counts._tables  # nothing of the whole mask's size kept
    few = slice(0, 5)  # a call touching few pixels is counted directly
    assert np.array_equal(
        counts.count("m", None if t is None else t[few], r[few], c[few]), brute[few]
    )


def test_window_counts_of_a_comparison_match_the_materialised_mask() -> None:
    rng = np.random.default_rng(4)
    values = rng.integers(0, 4, (2, 30, 40), dtype=np.uint8)
    t, r, c = rng.integers(0, 2, 500), rng.integers(0, 23, 500), rng.integers(0, 33, 500)
    for op, mask in (("eq", values == 2), ("ne", values != 2)):
        lazy, whole = WindowCounts(8), WindowCounts(8)
        lazy.add_comparison("m", values, op, 2)
        whole.add("m", mask)
        for n in (3, 500):  # direct, then summed-area table
            assert np.array_equal(
                lazy.count("m", t[:n], r[:n], c[:n]), whole.count("m", t[:n], r[:n], c[:n])
            )
        assert "m" in lazy._tables
    with pytest.raises(ValueError, match="op"):
        WindowCounts(8).add_comparison("m", values, "lt", 2)


@pytest.mark.parametrize("large", [False, True])
def test_window_counts_of_a_packed_mask_match_the_bool_mask(
    monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    import eoforge.chips.sampling as sampling

    if large:  # bands of 24 rows: the packed mask is unpacked a band at a time
        monkeypatch.setattr(sampling, "TABLE_BYTES", 4 * 8 * 41)
    rng = np.random.default_rng(6)
    mask = rng.random((2, 61, 43)) < 0.4  # a width that is not a multiple of 8
    t, r, c = rng.integers(0, 2, 800), rng.integers(0, 56, 800), rng.integers(0, 38, 800)
    packed, whole = WindowCounts(6), WindowCounts(6)
    packed.add("m", PackedMask.of(mask))
    whole.add("m", mask)
    for n in (3, 800):
        assert np.array_equal(
            packed.count("m", t[:n], r[:n], c[:n]), whole.count("m", t[:n], r[:n], c[:n])
        )
    assert ("m" in packed._tables) is not large


def test_sample_tile_is_the_same_with_packed_masks() -> None:
    rng = np.random.default_rng(7)
    y = _labels(rng, 2, 64, 68)
    nodata = rng.random(y.shape) < 0.2
    nodata[:, :20, :20] = True
    cloud = np.zeros_like(nodata)
    cloud[:, :, :20] = True
    spec = _spec(size=8, stride=8, val_fraction=0.25, max_nodata_fraction=0.5,
                 min_labelled_fraction=0.1)  # fmt: skip
    region = split_regions("A", 64, 68, spec, SamplingSpec())
    for method in ("grid", "random", "balanced"):
        sampling = SamplingSpec(method=method, chips_per_tile=6, max_cloud_fraction=0.5)
        a = sample_tile(y, nodata, region, spec, sampling, IGNORE, 4, cloud=cloud)
        b = sample_tile(
            y, PackedMask.of(nodata), region, spec, sampling, IGNORE, 4,
            cloud=PackedMask.of(cloud),
        )  # fmt: skip
        assert len(a) > 0 and a.rejected == b.rejected
        for field in ("t", "r", "c", "split", "nodata_fraction", "cloud_fraction"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(24, 72),
    w=st.integers(24, 72),
    size=st.integers(4, 16),
    stride_div=st.integers(1, 3),
    method=st.sampled_from(["grid", "random", "balanced"]),
    split=st.sampled_from(["tile", "block"]),
    val_fraction=st.floats(0.1, 0.6),
    block=st.integers(4, 24),
    seed=st.integers(0, 1000),
)
def test_no_pixel_is_shared_by_two_splits(
    h: int, w: int, size: int, stride_div: int, method: str, split: str,
    val_fraction: float, block: int, seed: int,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    y = _labels(rng, 2, h, w)
    spec = _spec(size=size, stride=max(1, size // stride_div), val_fraction=val_fraction)
    sampling = SamplingSpec(
        method=method,  # type: ignore[arg-type]
        split=split,  # type: ignore[arg-type]
        block_size=block,
        test_fraction=0.2,
        chips_per_tile=40,
        seed=seed,
    )
    try:
        blocks = assign_blocks({"A": (h, w)}, block, val_fraction, 0.2, seed)
    except InputError:
        return  # too few blocks for three splits: refused, nothing to check
    region = split_regions("A", h, w, spec, sampling, blocks)
    s = sample_tile(y, np.zeros_like(y, dtype=bool), region, spec, sampling, IGNORE, 4, seed=(0,))
    assert ((s.r >= 0) & (s.r + size <= h) & (s.c >= 0) & (s.c + size <= w)).all()
    occ = _occupancy(s, size, h, w) > 0
    assert not (occ[0] & occ[1]).any() and not (occ[0] & occ[2]).any()
    assert not (occ[1] & occ[2]).any()
    for code in range(3):  # every chip lies inside its own region
        assert (region[occ[code]] == code).all()


@settings(max_examples=25, deadline=None)
@given(
    dx=st.integers(-40, 40),
    dy=st.integers(-40, 40),
    half=st.booleans(),
    size=st.integers(4, 12),
    method=st.sampled_from(["grid", "random"]),
)
def test_overlapping_tiles_share_no_ground_across_splits(
    dx: int, dy: int, half: bool, size: int, method: str
) -> None:
    """Two tiles overlapping on the ground (grids offset by whole or half pixels)."""
    off = 0.5 if half else 0.0
    test_grid = TileGrid("B", "EPSG:32633", Affine(10, 0, 0, 0, -10, 600), 60, 60)
    train_grid = TileGrid(
        "A", "EPSG:32633", Affine(10, 0, (dx + off) * 10, 0, -10, 600 + (dy + off) * 10), 60, 60
    )
    spec = _spec(size=size, stride=size, val_fraction=0.3)
    sampling = SamplingSpec(method=method, chips_per_tile=60)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    boxes: dict[int, list[shapely.Polygon]] = {0: [], 1: [], 2: []}
    for i, grid in enumerate((test_grid, train_grid)):  # test tile first, as build_chips does
        covered = exclude_covered(grid, [test_grid] if i else [])
        region = split_regions(grid.tile, 60, 60, spec, sampling, covered=covered)
        y = _labels(rng, 1, 60, 60)
        s = sample_tile(
            y, np.zeros_like(y, dtype=bool), region, spec, sampling, IGNORE, 4, seed=(i,)
        )
        assert not (region[covered] < 3).any() if covered.any() else True
        for split, bounds in zip(s.split, grid.window_bounds(s.r, s.c, size), strict=True):
            boxes[int(split)].append(shapely.box(*bounds))
    for a in range(3):
        for b in range(a + 1, 3):
            if boxes[a] and boxes[b]:
                shared = shapely.intersection(
                    shapely.union_all(boxes[a]), shapely.union_all(boxes[b])
                )
                assert shared.area == pytest.approx(0, abs=1e-6)


def test_exclude_covered_across_crs() -> None:
    """A tile in the next UTM zone: its footprint is reprojected before it is excluded."""
    from pyproj import Transformer

    grid = TileGrid("A", "EPSG:32633", Affine(120, 0, 780_000, 0, -120, 5_100_000), 50, 50)
    # put B's top-left corner on A's centre, in zone 34's coordinates
    x, y = Transformer.from_crs(grid.crs, "EPSG:32634", always_xy=True).transform(
        783_000, 5_097_000
    )
    other = TileGrid("B", "EPSG:32634", Affine(120, 0, x, 0, -120, y), 50, 50)
    covered = exclude_covered(grid, [other])
    assert 0.15 < covered.mean() < 0.4  # about a quarter, rotated by the zone change
    region = split_regions("A", 50, 50, _spec(val_fraction=0.0), SamplingSpec(), covered=covered)
    assert (region[covered] == COVERED).all() and (region[~covered] == 0).all()
    assert NO_SPLIT not in region
