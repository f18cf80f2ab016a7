"""The torch side of the chip store: dataset, augmentations, sampler, loader, workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from eoforge.chips.cut import build_chips, read_split
from eoforge.chips.torch_data import ChipDataset, ChunkBatchSampler, chip_loader, dihedral
from eoforge.config import ChipSpec, LabelSpec
from eoforge.errors import InputError

BANDS = ("blue", "green", "red", "nir")


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    for i, tile in enumerate(("AAA", "BBB")):
        data = {
            b: (("time", "y", "x"), rng.integers(1, 5000, (3, 64, 64), dtype=np.uint16))
            for b in BANDS
        }
        data["scl"] = (
            ("time", "y", "x"),
            rng.choice(np.array([3, 4, 5, 6, 8], np.uint8), (3, 64, 64)),
        )
        xr.Dataset(
            data,
            attrs={
                "crs": "EPSG:32633",
                "transform": [120.0, 0.0, i * 9000.0, 0.0, -120.0, 0.0],
                "item_ids": [f"S2A_{tile}_2023080{d}_0_L2A" for d in range(3)],
            },
        ).to_zarr(root / "cube.zarr", group=tile, mode="w-", zarr_format=3, consolidated=False)
    spec = ChipSpec(size=8, stride=8, train_tiles=("AAA",), test_tiles=("BBB",))
    build_chips(root / "cube.zarr", root / "chips.zarr", spec, LabelSpec(), BANDS, chunk_chips=8)
    return root / "chips.zarr"


def test_samples_are_raw_dn_and_class_indices(chips: Path) -> None:
    ds = ChipDataset(chips, "test", augment=False)
    x_all, y_all = read_split(chips, "test")
    assert len(ds) == len(x_all) == 192 and ds.chunk_chips == 8
    x, y = ds[5]
    assert x.dtype == torch.float32 and x.shape == (4, 8, 8)
    assert y.dtype == torch.int64 and y.shape == (8, 8)
    assert torch.equal(x, torch.from_numpy(x_all[5].astype(np.float32)))
    assert torch.equal(y, torch.from_numpy(y_all[5].astype(np.int64)))
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.bands == list(BANDS) and ds.ignore_index == 255 and len(ds.band_mean) == 4


def test_augment_defaults_to_train_only(chips: Path) -> None:
    assert ChipDataset(chips, "train").augment and not ChipDataset(chips, "val").augment
    assert not ChipDataset(chips, "test").augment
    with pytest.raises(InputError, match="not one of"):
        ChipDataset(chips, "holdout")
    with pytest.raises(InputError, match="does not exist"):
        ChipDataset(chips.parent / "nope.zarr", "train")


def test_dihedral_group() -> None:
    a = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    images = {dihedral(a, k).tobytes() for k in range(8)}
    assert len(images) == 8  # eight distinct symmetries
    assert np.array_equal(dihedral(a, 0), a)
    assert np.array_equal(dihedral(dihedral(a, 4), 4), a)  # a flip undoes itself
    assert np.array_equal(dihedral(dihedral(a, 1), 3), a)  # quarter turns compose
    # all bands move together: channel values are untouched, only positions change
    for k in range(8):
        assert sorted(dihedral(a, k)[1].ravel()) == sorted(a[1].ravel())


def test_augmentation_moves_x_and_y_together_and_is_seeded(chips: Path) -> None:
    plain = ChipDataset(chips, "train", augment=False)
    aug = ChipDataset(chips, "train", augment=True, seed=3)
    codes = aug.transform_codes(0)
    assert set(codes.tolist()) == set(range(8))
    for i in range(12):
        x0, y0 = plain[i]
        x1, y1 = aug[i]
        k = int(codes[i])
        assert torch.equal(x1, torch.from_numpy(dihedral(x0.numpy(), k).copy()))
        assert torch.equal(y1, torch.from_numpy(dihedral(y0.numpy(), k).copy()))
    again = ChipDataset(chips, "train", augment=True, seed=3)
    assert torch.equal(again.read_batch([1, 2, 3])[0], aug.read_batch([1, 2, 3])[0])
    other_epoch = aug.read_batch(list(range(16)), epoch=1)[0]
    assert not torch.equal(other_epoch, aug.read_batch(list(range(16)), epoch=0)[0])


def test_sampler_covers_every_chip_once_per_epoch() -> None:
    sampler = ChunkBatchSampler(n=100, batch_size=16, chunk_chips=8, seed=1, window_chunks=3)
    first = list(sampler)
    second = list(sampler)
    assert len(first) == len(sampler) == 7
    for batches in (first, second):
        flat = [i for _, b in batches for i in b]
        assert sorted(flat) == list(range(100))
        assert all(b == sorted(b) for _, b in batches)
    assert {e for e, _ in first} == {0} and {e for e, _ in second} == {1}
    assert [b for _, b in first] != [b for _, b in second]
    sampler.set_epoch(0)
    assert list(sampler) == first  # reproducible by epoch
    # a batch draws from at most two consecutive windows of 3 chunks
    assert max(len({i // 8 for i in b}) for _, b in first) <= 6
    seq = ChunkBatchSampler(n=20, batch_size=8, chunk_chips=8, shuffle=False, drop_last=True)
    assert [b for _, b in seq] == [list(range(8)), list(range(8, 16))] and len(seq) == 2


def test_loader_batches_and_worker_determinism(chips: Path) -> None:
    def run(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = chip_loader(chips, "train", batch_size=16, seed=5, num_workers=workers)
        return list(loader)

    single = run(0)
    assert single[0][0].shape == (16, 4, 8, 8) and single[0][1].dtype == torch.int64
    assert sum(len(x) for x, _ in single) == len(ChipDataset(chips, "train"))
    multi = run(2)
    assert len(single) == len(multi)
    for (xa, ya), (xb, yb) in zip(single, multi, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # a second epoch reshuffles
    loader = chip_loader(chips, "train", batch_size=16, seed=5)
    e0, e1 = list(loader), list(loader)
    assert not torch.equal(e0[0][0], e1[0][0])


def test_plain_dataloader_uses_batched_reads(chips: Path) -> None:
    ds = ChipDataset(chips, "val", augment=False)
    batches = list(DataLoader(ds, batch_size=10, shuffle=False))
    x_all, _ = read_split(chips, "val")
    assert torch.equal(
        torch.cat([b[0] for b in batches]), torch.from_numpy(x_all.astype(np.float32))
    )


def test_chunk_cache_is_bounded(chips: Path) -> None:
    ds = ChipDataset(chips, "test", augment=False, cache_bytes=3 * 8 * (4 * 64 * 2 + 64))
    for i in range(0, len(ds), 8):
        ds[i]
    assert len(ds._cache) == 3 and ds._cached_bytes <= ds.cache_bytes
    nocache = ChipDataset(chips, "test", augment=False, cache_bytes=0)
    nocache[0]
    assert len(nocache._cache) == 0
    import pickle

    clone = pickle.loads(pickle.dumps(ds))  # what a worker receives: no handles, no cache
    assert clone._handles is None and len(clone._cache) == 0
    assert torch.equal(clone[3][0], ds[3][0])


@pytest.mark.slow
def test_workers_survive_a_prefect_flow_run_in_the_same_process(chips: Path) -> None:
    """Prefect 3.8 leaves its services' drain in threading's exit hooks of every forked child;
    a worker forked after a flow ran in-process used to exit with code 1 ("DataLoader worker
    exited unexpectedly")."""
    import os
    import subprocess
    import sys

    code = (
        "from prefect import flow\n"
        "from prefect.testing.utilities import prefect_test_harness\n"
        "from eoforge.chips.torch_data import chip_loader\n"
        "@flow\n"
        "def one() -> int:\n"
        "    return 1\n"
        "with prefect_test_harness(server_startup_timeout=120):\n"
        "    one()\n"
        f"loader = chip_loader({str(chips)!r}, 'train', batch_size=16, seed=5, num_workers=2)\n"
        "print('chips', sum(len(x) for x, _ in loader))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == str(len(ChipDataset(chips, "train")))
