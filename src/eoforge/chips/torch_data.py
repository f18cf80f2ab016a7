"""Torch access to a chip store: a map-style Dataset, a chunk-aware batch sampler, a loader factory.

Reading is organised around the store's chunks (``chunk_chips`` chips each, see ADR 0002):

- a batch is fetched with one Zarr call for all the chunks it needs that are not cached;
- each process keeps a small LRU cache of decoded chunks, so a chunk is decoded once per
  shuffle window instead of once per chip;
- :class:`ChunkBatchSampler` shuffles chunk order and chips within a window of a few chunks,
  which gives random batches because the store itself holds chips in a seeded random order.

Workers open their own Zarr handles (nothing opened is pickled). Augmentations are the eight
flips / 90-degree rotations of the square chip, applied to x and y alike: exact for any number
of bands, no interpolation, no RGB-only colour operations. The transform of chip ``i`` in epoch
``e`` is drawn from ``(seed, e)`` alone, so results do not depend on workers or batch size.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset, Sampler

# zarr's own event loop runner: runs many chunk reads concurrently in one round trip.
from zarr.core.sync import sync as _zarr_sync

from eoforge.errors import InputError
from eoforge.io.stores import open_group

__all__ = [
    "BatchRequest",
    "ChipDataset",
    "ChunkBatchSampler",
    "chip_loader",
    "dihedral",
]

SPLITS = ("train", "val", "test")
#: ``(epoch, sorted chip indices)``: what :class:`ChunkBatchSampler` yields.
BatchRequest = tuple[int, list[int]]


def dihedral(arr: NDArray[Any], code: int) -> NDArray[Any]:
    """One of the 8 symmetries of the square on the last two axes (code 0 = identity).

    ``code % 4`` quarter turns counter-clockwise, then a left-right flip if ``code >= 4``.
    """
    out = np.rot90(arr, code % 4, axes=(-2, -1))
    return out[..., ::-1] if code >= 4 else out


async def _gather(x: Any, y: Any, spans: Sequence[slice]) -> list[Any]:
    return list(
        await asyncio.gather(*(x.getitem(s) for s in spans), *(y.getitem(s) for s in spans))
    )


class ChipDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One split of a chip store as ``(x float32 (C, s, s) raw DN, y int64 (s, s))`` samples.

    Args:
        chips_path: chip store (ADR 0001/0002), local path or URI.
        split: ``train``, ``val`` or ``test``.
        augment: random flips / rotations; None means True for ``train`` only.
        seed: seed of the augmentations.
        storage_options: fsspec options for a remote store.
        cache_bytes: decoded chunks kept per process (0 disables the cache).
    """

    def __init__(
        self,
        chips_path: Path | str,
        split: str,
        augment: bool | None = None,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        cache_bytes: int = 256 << 20,
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"split '{split}' is not one of {SPLITS}.")
        self.chips_path = str(chips_path)
        self.split = split
        self.augment = split == "train" if augment is None else augment
        self.seed = seed
        self.storage_options = dict(storage_options or {})
        self.cache_bytes = cache_bytes
        self.epoch = 0
        root = open_group(self.chips_path, "r", self.storage_options)
        attrs: dict[str, Any] = dict(root.attrs)
        missing = [k for k in ("bands", "classes", "ignore_index", "chip_size") if k not in attrs]
        if missing or split not in root.group_keys():
            raise InputError(
                f"chip store '{self.chips_path}' lacks {missing or [split]} (ADR 0001); rebuild "
                "it with the chips stage."
            )
        self.bands: list[str] = list(attrs["bands"])
        self.classes: list[str] = list(attrs["classes"])
        self.ignore_index = int(attrs["ignore_index"])
        self.chip_size = int(attrs["chip_size"])
        self.band_mean: list[float] = list(attrs.get("band_mean", []))
        self.band_std: list[float] = list(attrs.get("band_std", []))
        x, _ = self._open_arrays(root)
        self._len = int(x.shape[0])
        self.chunk_chips = int(x.chunks[0]) if self._len else 1
        self._handles: tuple[zarr.Array[Any], zarr.Array[Any]] | None = None
        self._pid = -1
        self._cache: OrderedDict[int, tuple[NDArray[np.uint16], NDArray[np.uint8]]] = OrderedDict()
        self._cached_bytes = 0
        self._codes: tuple[int, NDArray[np.int8]] | None = None

    def _open_arrays(
        self, root: zarr.Group | None = None
    ) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
        group = (root or open_group(self.chips_path, "r", self.storage_options))[self.split]
        assert isinstance(group, zarr.Group)
        x, y = group.get("x"), group.get("y")
        if not isinstance(x, zarr.Array) or not isinstance(y, zarr.Array):
            raise InputError(
                f"chip store '{self.chips_path}' split '{self.split}' has no arrays x and y; "
                "rebuild it with the chips stage."
            )
        return x, y

    def _arrays(self) -> tuple[zarr.Array[Any], zarr.Array[Any]]:
        # a worker process gets a pickled copy without handles: open its own
        if self._handles is None or self._pid != os.getpid():
            self._handles = self._open_arrays()
            self._pid = os.getpid()
            self._cache.clear()
            self._cached_bytes = 0
        return self._handles

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_handles=None, _pid=-1, _cache=OrderedDict(), _cached_bytes=0)
        return state

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (for samplers that do not pass it)."""
        self.epoch = epoch

    def transform_codes(self, epoch: int) -> NDArray[np.int8]:
        """The :func:`dihedral` code of every chip in ``epoch`` (zeros without augmentation)."""
        if not self.augment:
            return np.zeros(self._len, dtype=np.int8)
        if self._codes is None or self._codes[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._codes = (epoch, rng.integers(0, 8, self._len).astype(np.int8))
        return self._codes[1]

    def _chunks(
        self, ids: Sequence[int]
    ) -> dict[int, tuple[NDArray[np.uint16], NDArray[np.uint8]]]:
        """Decoded chunks ``ids``: cached ones from memory, the rest in one concurrent read."""
        x_arr, y_arr = self._arrays()
        k = self.chunk_chips
        found = {i: self._cache[i] for i in ids if i in self._cache}
        for i in found:
            self._cache.move_to_end(i)
        todo = [i for i in ids if i not in found]
        if todo:
            # one event-loop round trip for every missing chunk of both arrays (concurrent I/O)
            spans = [slice(i * k, min((i + 1) * k, self._len)) for i in todo]
            parts = _zarr_sync(_gather(x_arr.async_array, y_arr.async_array, spans))
            for n, i in enumerate(todo):
                entry = (np.asarray(parts[n]), np.asarray(parts[len(todo) + n]))
                found[i] = entry
                self._remember(i, entry)
        return found

    def _remember(self, i: int, entry: tuple[NDArray[np.uint16], NDArray[np.uint8]]) -> None:
        size = entry[0].nbytes + entry[1].nbytes
        if size > self.cache_bytes:
            return
        self._cache[i] = entry
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old[0].nbytes + old[1].nbytes

    def read_batch(
        self, indices: Sequence[int], epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chips ``indices`` as ``x`` float32 ``(B, C, s, s)`` and ``y`` int64 ``(B, s, s)``.

        Args:
            indices: chip positions in the split (any order; output keeps it).
            epoch: augmentation epoch (default: the one of :meth:`set_epoch`).

        Raises:
            IndexError: an index is out of range.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self._len or idx.max() >= self._len):
            raise IndexError(f"chip index out of range for split '{self.split}' of {self._len}")
        idx = np.where(idx < 0, idx + self._len, idx)
        k = self.chunk_chips
        chunks = self._chunks(sorted({int(i) // k for i in idx}))
        x = np.empty((idx.size, len(self.bands), self.chip_size, self.chip_size), np.float32)
        y = np.empty((idx.size, self.chip_size, self.chip_size), np.int64)
        for j, i in enumerate(idx.tolist()):
            cx, cy = chunks[i // k]
            x[j] = cx[i % k]
            y[j] = cy[i % k]
        if self.augment:
            codes = self.transform_codes(self.epoch if epoch is None else epoch)[idx]
            for code in np.unique(codes).tolist():
                if code:
                    sel = np.flatnonzero(codes == code)
                    x[sel] = dihedral(x[sel], code)
                    y[sel] = dihedral(y[sel], code)
        return torch.from_numpy(x), torch.from_numpy(y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.read_batch([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch used by :class:`torch.utils.data.DataLoader` with auto-batching."""
        x, y = self.read_batch(indices)
        return list(zip(x, y, strict=True))


class ChunkBatchSampler(Sampler[BatchRequest]):
    """Batches of chip indices that respect the store's chunks (see module doc).

    Each epoch: chunks are shuffled; consecutive ``window_chunks`` chunks are pooled and their
    chips shuffled; batches are cut from that stream and sorted. Without ``shuffle`` batches
    are consecutive. Every batch comes with its epoch, for the augmentations.

    Args:
        n: chips in the split.
        batch_size: chips per batch.
        chunk_chips: chips per store chunk.
        shuffle: shuffle as above, else sequential.
        seed: shuffling seed.
        window_chunks: chunks pooled per shuffle window.
        drop_last: drop a last, smaller batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        chunk_chips: int,
        shuffle: bool = True,
        seed: int = 0,
        window_chunks: int = 8,
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0 or chunk_chips <= 0 or window_chunks <= 0:
            raise InputError("batch_size, chunk_chips and window_chunks must be positive.")
        self.n = n
        self.batch_size = batch_size
        self.chunk_chips = chunk_chips
        self.shuffle = shuffle
        self.seed = seed
        self.window_chunks = window_chunks
        self.drop_last = drop_last
        self._epoch = 0
        self._explicit = False

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (otherwise epochs count up from 0)."""
        self._epoch = epoch
        self._explicit = True

    def order(self, epoch: int) -> NDArray[np.int64]:
        """The chip order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        n_chunks = math.ceil(self.n / self.chunk_chips)
        chunks = rng.permutation(n_chunks)
        parts = []
        for w in range(0, n_chunks, self.window_chunks):
            rows = np.concatenate(
                [
                    np.arange(c * self.chunk_chips, min((c + 1) * self.chunk_chips, self.n))
                    for c in chunks[w : w + self.window_chunks]
                ]
            )
            parts.append(rng.permutation(rows))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[BatchRequest]:
        epoch = self._epoch
        if not self._explicit:
            self._epoch += 1
        self._explicit = False
        order = self.order(epoch)
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield epoch, sorted(batch.tolist())

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)


class _BatchReader(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Adapter: a :data:`BatchRequest` in, a whole batch out (one read per batch)."""

    def __init__(self, chips: ChipDataset) -> None:
        self.chips = chips

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, request: BatchRequest) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, indices = request
        return self.chips.read_batch(indices, epoch=epoch)


def _forget_inherited_prefect_exit_hooks(_worker_id: int) -> None:
    """In a forked DataLoader worker, drop the thread-exit hooks of Prefect's services that the
    worker inherited from its parent.

    Prefect 3.8 registers its event and log services' ``drain`` with ``threading``'s exit
    hooks and resets those services after a fork, but not the hooks: a forked child runs
    ``drain`` on the reset state as it exits, which fails an assertion, so the worker exits
    with code 1 and torch raises "DataLoader worker exited unexpectedly". Any process that ran
    a Prefect flow before loading chips with ``num_workers`` > 0 (a notebook, a test session)
    hit it. The parent keeps its own hooks; nothing of Prefect is imported here.
    """
    hooks = getattr(threading, "_threading_atexits", None)  # partials of the callables
    if isinstance(hooks, list):
        hooks[:] = [hook for hook in hooks if not _of_prefect(getattr(hook, "func", hook))]


def _of_prefect(fn: Any) -> bool:
    """Whether ``fn`` is a method of an object of a Prefect class."""
    return type(getattr(fn, "__self__", None)).__module__.split(".")[0] == "prefect"


def chip_loader(
    chips_path: Path | str,
    split: str,
    batch_size: int = 32,
    shuffle: bool | None = None,
    augment: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    window_chunks: int = 8,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader of ``(x (B, C, s, s) float32, y (B, s, s) int64)`` batches from a chip store.

    Args:
        chips_path: chip store, local path or URI.
        split: ``train``, ``val`` or ``test``.
        batch_size: chips per batch.
        shuffle: chunk-aware shuffling (None: True for ``train``).
        augment: flips / rotations (None: True for ``train``).
        seed: seed of shuffling and augmentation; equal seeds give equal batches whatever
            ``num_workers``.
        num_workers: worker processes (each opens its own store handle).
        drop_last: drop a last, smaller batch.
        storage_options: fsspec options for a remote store.
        window_chunks: chunks pooled per shuffle window.
        pin_memory: pin batches for faster host-to-GPU copies.
        persistent_workers: keep workers between epochs.
    """
    chips = ChipDataset(chips_path, split, augment, seed, storage_options)
    sampler = ChunkBatchSampler(
        len(chips),
        batch_size,
        chips.chunk_chips,
        split == "train" if shuffle is None else shuffle,
        seed,
        window_chunks,
        drop_last,
    )
    return DataLoader(
        _BatchReader(chips),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=_forget_inherited_prefect_exit_hooks if num_workers > 0 else None,
    )
