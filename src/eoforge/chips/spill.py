"""Chips on their way to the store: spilled to raw files as they are cut, written out shuffled.

:func:`eoforge.chips.cut.build_chips` cuts tile after tile; every chip goes at once into a raw
file of its split (``np.memmap``, local disk, in a folder the build creates and removes:
:func:`spill_folder`), and the store is written from those files in its seeded random order, a
slab of whole chunks (or shards) at a time. Memory holds one slab and the per-chip bookkeeping (origin and index rows),
never a split's chips: 113k chips of 64 px from one 10980 px tile took 13.4 GB when they were
gathered in memory. The arrays written are the same bytes as from one in-memory array.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from numpy.typing import NDArray

from eoforge.errors import InputError

__all__ = [
    "SLAB_BYTES",
    "RawChips",
    "SplitSpill",
    "band_stats",
    "spill_folder",
    "write_shuffled",
]

#: Raw bytes of chips moved per slab (rounded to whole chunks or shards).
SLAB_BYTES = 64 << 20
#: Spill folders are ``<tmp>/eoforge-chips-<pid>-<random>`` holding this marker (the pid).
_PREFIX = "eoforge-chips-"
_MARKER = ".eoforge-chips-spill"
_SPILL_FILE = re.compile(r"(train|val|test)-[xy]\.raw")


@contextlib.contextmanager
def spill_folder() -> Iterator[Path]:
    """A new spill folder in the temp directory (``TMPDIR``), removed on exit.

    A build killed outright (SIGKILL, power loss) cannot remove its folder; the next build
    removes such leftovers first, and only what it can prove a build made: a folder named
    like ours, holding our marker with the pid of a process that no longer runs, and nothing
    but spill files.
    """
    root = Path(tempfile.gettempdir())
    _remove_stale(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=root))
    try:
        (folder / _MARKER).write_text(str(os.getpid()))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    for folder in root.glob(f"{_PREFIX}*"):
        try:
            pid = int((folder / _MARKER).read_text().strip())
            names = [p.name for p in folder.iterdir()]
        except (OSError, ValueError):
            continue  # not ours, or not readable: leave it
        if not all(n == _MARKER or _SPILL_FILE.fullmatch(n) for n in names):
            continue
        try:
            os.kill(pid, 0)
            continue  # its build still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(folder, ignore_errors=True)


class RawChips:
    """One array of chips ``(n, *shape)`` in a raw file, grown by :meth:`reserve`."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.n = 0
        path.touch(exist_ok=False)

    def reserve(self, count: int) -> None:
        """Grow the file by ``count`` chips, their disk blocks allocated now.

        Raises:
            InputError: the disk cannot hold them (a write into a mapped file on a full disk
                would kill the process with SIGBUS instead).
        """
        chip = int(np.prod(self.shape)) * self.dtype.itemsize
        with self.path.open("r+b") as f:
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), self.n * chip, count * chip)
                else:  # pragma: no cover - not Linux
                    f.truncate((self.n + count) * chip)
            except OSError as exc:
                raise InputError(
                    f"chips: no room for {count} more chips ({count * chip / 1e6:.0f} MB) in "
                    f"the spill file {self.path} ({exc.strerror}); free space there or set TMPDIR "
                    "to a disk with room for the chips of a split."
                ) from exc
        self.n += count

    def write(self, positions: NDArray[np.int64] | slice, chips: NDArray[Any]) -> None:
        """Store ``chips`` at ``positions``."""
        with self._mapped() as view:
            view[positions] = chips

    def take(self, positions: NDArray[np.int64] | slice) -> NDArray[Any]:
        """A copy of the chips at ``positions``."""
        with self._mapped() as view:
            return np.array(view[positions])

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[NDArray[Any]]:
        """The file mapped for one access only: pages it touched leave this process's resident
        set when it is unmapped, so RSS stays bounded by the access, not by the file."""
        if self.n == 0:
            yield np.zeros((0, *self.shape), dtype=self.dtype)
            return
        view = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(self.n, *self.shape))
        try:
            yield view
        finally:
            del view  # the last reference: the file is unmapped here


class SplitSpill:
    """The chips of one split so far: bands ``x`` and labels ``y`` in raw files, origins and
    index rows in memory, label value counts."""

    def __init__(
        self, folder: Path, name: str, x_shape: tuple[int, ...], x_dtype: np.dtype[Any], size: int
    ) -> None:
        self.x = RawChips(folder / f"{name}-x.raw", x_shape, x_dtype)
        self.y = RawChips(folder / f"{name}-y.raw", (size, size), np.dtype(np.uint8))
        self.origin: list[NDArray[np.int32]] = []
        self.index: list[pd.DataFrame] = []
        self.label_counts = np.zeros(256, dtype=np.int64)

    @property
    def n(self) -> int:
        """Chips spilled so far."""
        return self.x.n

    def reserve(self, count: int) -> int:
        """Room for ``count`` more chips in both files; returns the first new chip's position.

        Raises:
            InputError: the disk cannot hold them.
        """
        start = self.n
        self.x.reserve(count)
        self.y.reserve(count)
        return start


def _slab(unit: int, chip_bytes: int) -> int:
    """Chips per slab: whole ``unit`` (chunk or shard) multiples within :data:`SLAB_BYTES`."""
    return max(1, SLAB_BYTES // max(unit * chip_bytes, 1)) * unit


def write_shuffled(
    group: zarr.Group,
    name: str,
    source: RawChips,
    order: NDArray[np.int64],
    chunk_chips: int,
    shard_chips: int | None,
    compressors: Any,
) -> None:
    """Array ``name`` = ``source``'s chips in ``order``, ``chunk_chips`` chips per chunk
    (optionally sharded), written a slab of whole chunks / shards at a time."""
    n = len(order)
    item, dtype = source.shape, source.dtype
    inner = (chunk_chips, *item)
    shards = None
    if shard_chips is not None and n > chunk_chips:
        shards = (min(shard_chips, -(-n // chunk_chips) * chunk_chips), *item)
    arr = group.create_array(
        name,
        shape=(n, *item),
        dtype=dtype,
        chunks=inner,
        shards=shards,
        compressors=compressors,
        fill_value=0,
    )
    per = _slab(shards[0] if shards else chunk_chips, int(np.prod(item)) * dtype.itemsize)
    for start in range(0, n, per):
        arr[start : start + per] = source.take(order[start : start + per])


def band_stats(spill: SplitSpill) -> tuple[list[float], list[float]]:
    """Per-band mean / std (std floored at 1 DN) of a split's chips over pixels where every band
    is valid (!= 0), accumulated a slab at a time (Chan et al.'s pairwise update: the values of
    one pass over all chips, up to float rounding)."""
    bands = spill.x.shape[0]
    count = np.zeros(bands, dtype=np.float64)
    mean = np.zeros(bands, dtype=np.float64)
    m2 = np.zeros(bands, dtype=np.float64)
    per = _slab(1, int(np.prod(spill.x.shape)) * spill.x.dtype.itemsize)
    for start in range(0, spill.n, per):
        block = spill.x.take(slice(start, start + per))
        valid = (block != 0).all(axis=1)
        k = float(valid.sum())
        if k == 0:
            continue
        for b in range(bands):
            values = block[:, b][valid].astype(np.float64)
            bmean = float(values.mean())
            bm2 = float(((values - bmean) ** 2).sum())
            total = count[b] + k
            delta = bmean - mean[b]
            mean[b] += delta * k / total
            m2[b] += bm2 + delta * delta * count[b] * k / total
            count[b] = total
    std = np.sqrt(m2 / np.maximum(count, 1))
    return [float(v) for v in mean], [float(max(v, 1.0)) for v in std]
