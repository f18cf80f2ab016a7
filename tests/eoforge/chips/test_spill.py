"""Chips spilled to raw files and written out shuffled (eoforge.chips.spill): the same arrays as
from one in-memory array, a bounded slab at a time (nothing left behind: test_cut)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import eoforge.chips.spill as spill_module
from eoforge.chips.spill import SplitSpill, band_stats, write_shuffled


def _spill(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> SplitSpill:
    spill = SplitSpill(tmp_path, "train", x.shape[1:], x.dtype, x.shape[-1])
    # two tiles' worth, the second written out of order (as strips deliver them)
    first = spill.reserve(5)
    spill.x.write(np.arange(first, first + 5), x[:5])
    spill.y.write(slice(first, first + 5), y[:5])
    second = spill.reserve(len(x) - 5)
    back = np.arange(second, len(x))[::-1]
    spill.x.write(back, x[5:][::-1])
    spill.y.write(slice(second, len(x)), y[5:])
    return spill


@pytest.mark.parametrize("shard_chips", [None, 8])
def test_shuffled_write_matches_one_in_memory_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shard_chips: int | None
) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3000, (37, 3, 8, 8), dtype=np.uint16)
    y = rng.integers(0, 5, (37, 8, 8), dtype=np.uint8)
    spill = _spill(tmp_path, x, y)
    assert np.array_equal(spill.x.take(slice(None)), x)
    assert np.array_equal(spill.y.take(np.arange(37)), y)
    monkeypatch.setattr(spill_module, "SLAB_BYTES", 1)  # one chunk or shard per slab
    order = rng.permutation(37)
    streamed = zarr.open_group(str(tmp_path / "streamed.zarr"), mode="w")
    write_shuffled(streamed, "x", spill.x, order, 4, shard_chips, None)
    whole = zarr.open_group(str(tmp_path / "whole.zarr"), mode="w")
    shards = None if shard_chips is None else (shard_chips, 3, 8, 8)
    whole.create_array("x", data=x[order], chunks=(4, 3, 8, 8), shards=shards, compressors=None)
    assert np.array_equal(streamed["x"][...], x[order])
    assert streamed["x"].chunks == whole["x"].chunks and streamed["x"].shards == shards
    # every stored chunk / shard file holds the same bytes as the one-call write
    files = sorted(p.relative_to(tmp_path / "whole.zarr") for p in (tmp_path / "whole.zarr" / "x" / "c").rglob("*") if p.is_file())  # fmt: skip
    assert files
    for rel in files:
        assert (tmp_path / "streamed.zarr" / rel).read_bytes() == (tmp_path / "whole.zarr" / rel).read_bytes()  # fmt: skip


def test_band_stats_over_slabs_match_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3000, (40, 4, 8, 8), dtype=np.uint16)
    x[3, 1] = 0  # nodata in one band: that chip's pixels leave every band's statistics
    spill = _spill(tmp_path, x, np.zeros((40, 8, 8), np.uint8))
    monkeypatch.setattr(spill_module, "SLAB_BYTES", 7 * x[0].nbytes)  # slabs of 7 chips
    mean, std = band_stats(spill)
    valid = (x != 0).all(axis=1)
    for b in range(4):
        values = x[:, b][valid].astype(np.float64)
        assert mean[b] == pytest.approx(values.mean(), rel=1e-12)
        assert std[b] == pytest.approx(max(values.std(), 1.0), rel=1e-12)


def test_a_killed_builds_spill_is_removed_but_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)

    def folder(name: str, pid: int | None, files: tuple[str, ...]) -> Path:
        path = tmp_path / name
        path.mkdir()
        if pid is not None:
            (path / ".eoforge-chips-spill").write_text(str(pid))
        for f in files:
            (path / f).write_bytes(b"x")
        return path

    stale = folder("eoforge-chips-1-a", dead_pid, ("train-x.raw", "val-y.raw"))
    running = folder("eoforge-chips-2-b", os.getpid(), ("train-x.raw",))
    mixed = folder("eoforge-chips-3-c", dead_pid, ("train-x.raw", "notes.txt"))
    unmarked = folder("eoforge-chips-4-d", None, ("train-x.raw",))
    with spill_module.spill_folder() as mine:
        assert mine.is_dir() and mine.name.startswith(f"eoforge-chips-{os.getpid()}-")
        assert not stale.exists()
        assert running.exists() and mixed.exists() and unmarked.exists()
    assert not mine.exists()
    assert (mixed / "notes.txt").read_bytes() == b"x"
