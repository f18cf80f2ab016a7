"""Where and how training runs: device choice, mixed precision, seeding, torch threads, progress.

:func:`resolve_device` maps ``train.device`` to a torch device; the private helpers set up the
runtime of one :func:`eoforge.training.train.train_model` call (autocast, seeds, deterministic
algorithms and thread count restored afterwards, a rich progress bar, an EMA of the weights).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from eoforge.compute import gpu
from eoforge.compute.cpus import usable_cpus
from eoforge.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(choice: str) -> torch.device:
    """The torch device for ``train.device``: ``auto`` takes a usable CUDA GPU, else the CPU.

    Raises:
        InputError: ``cuda`` was asked for but no CUDA GPU is usable in this process.
    """
    if choice == "cpu":
        return torch.device("cpu")
    device = gpu.torch_device(prefer_gpu=True)
    if choice == "cuda" and device.type != "cuda":
        raise InputError(
            "train.device is 'cuda' but no CUDA GPU is usable here (none visible, "
            f"{gpu.DISABLE_ENV}=1, or a CPU-only torch build); set train.device to 'auto' or "
            "'cpu', or run on a GPU worker with the GPU extra (pip install .[gpu])."
        )
    return device


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return "cpu"


def _weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm buffers, or None."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _autocast(device: torch.device, amp: bool) -> Any:
    return gpu.amp_autocast(device) if amp else contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _torch_runtime(threads: int | None, device: torch.device) -> Iterator[None]:
    """Set threads and deterministic algorithms for the block; restore torch's state after."""
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace (read when CUDA initialises)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads or usable_cpus())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn)


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Any]:
    """Yield ``advance(epoch, record, best)``: a rich progress bar, or a no-op."""
    if not enabled:
        yield lambda *_: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("train"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=total, status="")

        def advance(epoch: int, record: Mapping[str, float], best: float) -> None:
            status = (
                f"loss {record['train_loss']:.3f} val mIoU {record['val_miou']:.3f} "
                f"(best {best:.3f})"
            )
            bar.update(task, completed=epoch, status=status)

        yield advance
