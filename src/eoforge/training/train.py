"""Train the segmentation network on a chip store and write it as safetensors + JSON.

Training is seeded: random flips / 90-degree rotations (the only augmentations that keep
multispectral values physically meaningful), class-weighted cross-entropy plus soft Dice
against class imbalance, AdamW with a warm-up + cosine learning-rate schedule, validation mIoU
every epoch on the spatially held-out ``val`` split, best-checkpoint selection and early
stopping on it. The model directory layout is described in ADR 0001 (read back by
:mod:`eoforge.training.files`).

It runs on a CUDA GPU when one is usable (``train.device: auto``, the default, with the GPU
extra installed): the chips are read from Zarr straight into GPU memory
(:func:`eoforge.compute.gpu.read_chips_to_gpu`, kvikio where installed) and the forward pass runs under
mixed precision (bf16, or fp16 with loss scaling). Otherwise it runs on the CPU in fp32.

Same seed, same chip store, same thread count, same device -> same weights and metrics, as
long as the machine is fast enough to run ``max_epochs`` within ``max_seconds``. When it is
not (judged at each epoch end from the second on), the schedule follows the wall clock from
there (so the learning rate still anneals within the budget) and the result depends on the
machine's speed; ``model.json`` then names the epoch (``schedule_clock_from_epoch``).

Reading the chip store lives in :mod:`eoforge.chips.read`, the device / runtime helpers in
:mod:`eoforge.training.runtime`, the loss, schedule and augmentation in :mod:`eoforge.training.ops`
and the model directory format in :mod:`eoforge.training.files`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel

from eoforge.chips.read import ChipSplit, class_weights, read_chip_split, read_chip_store_attrs
from eoforge.compute import gpu
from eoforge.config import TrainSpec
from eoforge.errors import InputError
from eoforge.io.atomic import sha256_file, staged_file, write_json_atomic
from eoforge.training.files import (
    MODEL_CONFIG_NAME,
    MODEL_FORMAT,
    MODEL_WEIGHTS_NAME,
)
from eoforge.training.metrics import confusion_matrix, metrics_from_confusion
from eoforge.training.models import ARCHITECTURE, DEPTH, build_model, check_window, index_pairs_for
from eoforge.training.ops import DIHEDRAL_OPS, Schedule, SegmentationLoss, augment_dihedral
from eoforge.training.runtime import (
    _autocast,
    _device_name,
    _progress_bar,
    _seed_everything,
    _torch_runtime,
    _weight_average,
    resolve_device,
)

__all__ = [
    "TrainHyperParams",
    "TrainResult",
    "evaluate",
    "train_model",
]


@dataclass(frozen=True)
class TrainHyperParams:
    """Every knob of :func:`train_model`, resolved from a :class:`~eoforge.config.TrainSpec`.

    Fields the spec has override the defaults here, so new ``TrainSpec`` fields with these
    names take effect without code changes.
    """

    seed: int = 0
    """Seed of torch, numpy and Python's RNG (weights, shuffling, augmentation)."""
    max_epochs: int = 60
    """Upper bound on epochs; also the length of the learning-rate schedule."""
    max_seconds: float = 110.0
    """Wall-clock safety stop: no epoch is started that would end after it."""
    batch_size: int = 16
    """Chips per optimiser step."""
    learning_rate: float = 3e-3
    """Peak learning rate (after warm-up, before the cosine decay)."""
    base_channels: int = 16
    """UNet feature channels at full resolution."""
    threads: int | None = None
    """torch intra-op threads (None: all cores)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    patience: int = 12
    """Stop after this many epochs without a better validation mIoU."""
    dice_weight: float = 1.0
    """Weight of the soft Dice term added to the weighted cross-entropy."""
    class_weight_power: float = 0.5
    """Cross-entropy class weight = train frequency ** -power (0: unweighted)."""
    warmup_fraction: float = 0.1
    """Fraction of the schedule spent warming the learning rate up (0 <= f < 1)."""
    spectral_indices: bool = True
    """Feed the network NDVI / NDWI computed from the raw bands (see eoforge.training.models)."""
    device: str = "auto"
    """``auto`` (a usable CUDA GPU, else the CPU), ``cpu`` or ``cuda``."""
    amp: bool = True
    """Mixed precision on CUDA (bf16, else fp16 with loss scaling); the CPU trains in fp32."""
    ema_decay: float | None = None
    """Validate, select and save an exponential moving average of the weights (None: off)."""

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)!r} must be {rule}"
            for name, ok, rule in (
                ("max_epochs", self.max_epochs >= 1, ">= 1"),
                ("max_seconds", self.max_seconds > 0, "> 0"),
                ("batch_size", self.batch_size >= 1, ">= 1"),
                ("learning_rate", self.learning_rate > 0, "> 0"),
                ("base_channels", self.base_channels >= 1, ">= 1"),
                ("threads", self.threads is None or self.threads >= 1, "None or >= 1"),
                ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("patience", self.patience >= 1, ">= 1"),
                ("dice_weight", self.dice_weight >= 0, ">= 0"),
                ("class_weight_power", self.class_weight_power >= 0, ">= 0"),
                ("warmup_fraction", 0 <= self.warmup_fraction < 1, "in [0, 1)"),
                ("device", self.device in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
                (
                    "ema_decay",
                    self.ema_decay is None or 0 < self.ema_decay < 1,
                    "None or in (0, 1)",
                ),
            )
            if not ok
        ]
        if problems:
            raise InputError(f"training spec: {'; '.join(problems)}; fix the train section.")

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> TrainHyperParams:
        """Take every field of ``spec`` that this class knows; keep the defaults for the rest."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in spec.model_dump().items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` produced."""

    model_dir: Path
    """Directory holding the model files."""
    weights_path: Path
    """``model.safetensors``: the best checkpoint's state dict."""
    config_path: Path
    """``model.json``: architecture, hyper-parameters, bands, classes, statistics, history."""
    best_epoch: int
    """Epoch (1-based) of the checkpoint kept, chosen by validation mIoU."""
    best_val_miou: float
    """Validation mIoU of that checkpoint."""
    epochs_run: int
    """Epochs trained before a limit or early stopping ended training."""
    seconds: float
    """Wall-clock seconds from building the model to the last validation (what
    ``max_seconds`` bounds; reading chips and writing files are not included)."""
    history: tuple[dict[str, float], ...]
    """One record per epoch: epoch, train_loss, val_loss, val_miou, val_accuracy, lr, seconds,
    steps and train_seconds (the optimiser steps of the epoch and the time they took)."""
    device: str = "cpu"
    """``cpu`` or ``cuda``: where it trained."""
    amp_dtype: str | None = None
    """The autocast dtype (``bfloat16`` / ``float16``) on CUDA, None in fp32."""
    chip_route: str = "cpu"
    """How the train chips reached the device (:data:`eoforge.compute.gpu.ChipRoute`)."""
    steps_per_second: float = 0.0
    """Optimiser steps per second of training time (validation excluded): the step rate."""
    schedule_clock_from_epoch: int | None = None
    """The first epoch trained with the wall clock leading the learning-rate schedule (the
    budget could not hold ``max_epochs``); None: the schedule followed the steps, and the
    result is reproducible."""


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: ChipSplit,
    class_names: Sequence[str],
    ignore_index: int = 255,
    batch_size: int = 64,
    loss_fn: nn.Module | None = None,
    amp: bool = False,
) -> tuple[dict[str, Any], float]:
    """Score a model on chips, on the device the model's parameters are on.

    Args:
        model: the network (put in eval mode here).
        split: chips to score.
        class_names: the K class names, index = class value.
        ignore_index: label value of unlabelled pixels.
        batch_size: chips per forward pass.
        loss_fn: also compute the mean loss with this criterion.
        amp: run the forward pass under CUDA autocast (no effect on the CPU).

    Returns:
        The :func:`eoforge.training.metrics.metrics_from_confusion` dict (``miou``,
        ``pixel_accuracy``, per-class scores) and the mean loss (NaN without ``loss_fn``).
    """
    model.eval()
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    loss_sum, batches = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(split.x), batch_size):
        xb = torch.from_numpy(split.x[start : start + batch_size].astype(np.float32)).to(device)
        yb = split.y[start : start + batch_size]
        with _autocast(device, amp):
            logits = model(xb)
            if loss_fn is not None:
                target = torch.from_numpy(yb.astype(np.int64)).to(device)
                loss_sum += float(loss_fn(logits, target))
                batches += 1
        pred = logits.argmax(1).cpu().numpy().astype(np.uint8)
        cm += confusion_matrix(yb, pred, k, ignore_index)
    metrics = metrics_from_confusion(cm, class_names)
    return metrics, (loss_sum / batches if batches else float("nan"))


def train_model(
    chips_path: Path, spec: TrainSpec, out_dir: Path, progress: bool = True
) -> TrainResult:
    """Train the UNet on the ``train`` split, select it on ``val``, write the model directory.

    Args:
        chips_path: chip store (ADR 0001) with ``train`` and ``val`` splits.
        spec: training parameters (see :class:`TrainHyperParams` for every knob used).
        out_dir: model directory to write ``model.safetensors`` and ``model.json`` into
            (created if needed; each file is written to a temporary name and renamed, the
            JSON last, so a directory with a ``model.json`` holds complete weights).
        progress: show a progress bar on the console.

    Returns:
        The :class:`TrainResult` of the best checkpoint by validation mIoU.

    Raises:
        InputError: the chip store is missing, malformed, or has an empty train / val split.
    """
    hp = TrainHyperParams.from_spec(spec)
    attrs = read_chip_store_attrs(chips_path)
    train = read_chip_split(chips_path, "train")
    val = read_chip_split(chips_path, "val")
    bands, classes = list(attrs["bands"]), list(attrs["classes"])
    ignore_index = int(attrs["ignore_index"])
    for name, split in (("train", train), ("val", val)):
        if len(split.x) == 0:
            raise InputError(
                f"chip store '{chips_path}' split '{name}' holds no chips; loosen the chip "
                "filters or add imagery."
            )
        if split.x.shape[1] != len(bands):
            raise InputError(
                f"chip store '{chips_path}' split '{name}' has {split.x.shape[1]} bands but "
                f"attrs list {len(bands)}; rebuild it with the chips stage."
            )
        check_window(*split.x.shape[2:])
    if not (train.y[train.y != ignore_index] < len(classes)).all():
        raise InputError(
            f"chip store '{chips_path}' train labels hold values >= {len(classes)} other than "
            f"ignore_index {ignore_index}; rebuild it with the chips stage."
        )

    device = resolve_device(hp.device)
    use_amp = hp.amp and gpu.amp_dtype(device) is not None
    chips = _TrainChips.load(chips_path, train, device)
    started = time.perf_counter()
    with _torch_runtime(hp.threads, device):
        _seed_everything(hp.seed)
        rng = np.random.default_rng(hp.seed)
        pairs = index_pairs_for(bands) if hp.spectral_indices else []
        model = build_model(
            len(bands),
            len(classes),
            hp.base_channels,
            attrs["band_mean"],
            attrs["band_std"],
            pairs,
        )
        # NHWC runs the CPU (oneDNN) convolutions ~25% faster than NCHW here, and is the
        # layout tensor cores want on the GPU.
        model = model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        weights = class_weights(train.y, len(classes), ignore_index, hp.class_weight_power)
        loss_fn = SegmentationLoss(weights, ignore_index, hp.dice_weight).to(device)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        scaler = gpu.grad_scaler(device) if use_amp else None
        ema = _weight_average(model, hp.ema_decay)
        scored: nn.Module = ema.module if ema is not None else model
        steps_per_epoch = -(-len(train.x) // hp.batch_size)
        schedule = Schedule(
            optimiser,
            hp.learning_rate,
            hp.warmup_fraction,
            hp.max_epochs * steps_per_epoch,
            hp.max_seconds,
        )
        history: list[dict[str, float]] = []
        best_state: dict[str, torch.Tensor] = {}
        best_miou, best_epoch, longest_epoch = -1.0, 0, 0.0
        clock_from_epoch: int | None = None  # the first epoch run with the clock leading
        with _progress_bar(progress, hp.max_epochs) as advance:
            for epoch in range(1, hp.max_epochs + 1):
                elapsed = time.perf_counter() - started
                if epoch > 1 and elapsed + longest_epoch > hp.max_seconds:
                    break
                epoch_start = time.perf_counter()
                lr = optimiser.param_groups[0]["lr"]
                train_loss, steps = _train_epoch(
                    model, chips, loss_fn, optimiser, schedule, hp.batch_size, rng, scaler, use_amp,
                    ema,
                )  # fmt: skip
                train_seconds = time.perf_counter() - epoch_start
                val_metrics, val_loss = evaluate(
                    scored, val, classes, ignore_index, loss_fn=loss_fn, amp=use_amp
                )
                val_miou = float(val_metrics["miou"] or 0.0)
                epoch_seconds = time.perf_counter() - epoch_start
                longest_epoch = max(longest_epoch, epoch_seconds)
                # the first epoch carries start-up costs: pace is judged from the second on
                if (
                    epoch > 1
                    and clock_from_epoch is None
                    and schedule.check_pace(epoch_seconds, hp.max_epochs - epoch)
                ):
                    clock_from_epoch = epoch + 1
                record = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_miou": val_miou,
                    "val_accuracy": float(val_metrics["pixel_accuracy"] or 0.0),
                    "lr": float(lr),
                    "seconds": time.perf_counter() - started,
                    "steps": steps,
                    "train_seconds": train_seconds,
                }
                history.append(record)
                if val_miou > best_miou:
                    best_miou, best_epoch = val_miou, epoch
                    best_state = {
                        k: v.detach().to("cpu", copy=True).contiguous()
                        for k, v in scored.state_dict().items()
                    }
                advance(epoch, record, best_miou)
                if epoch - best_epoch >= hp.patience:
                    break
    seconds = time.perf_counter() - started
    amp_dtype = gpu.amp_dtype(device) if use_amp else None
    amp_name = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None
    total_steps = sum(int(r["steps"]) for r in history)
    step_seconds = sum(r["train_seconds"] for r in history)
    steps_per_second = total_steps / step_seconds if step_seconds > 0 else 0.0

    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / MODEL_WEIGHTS_NAME
    with staged_file(weights_path) as tmp:
        save_file(best_state, str(tmp), {"format": "pt"})
    config = {
        "format": MODEL_FORMAT,
        "architecture": {
            "name": ARCHITECTURE,
            "depth": DEPTH,
            "in_channels": len(bands),
            "num_classes": len(classes),
            "base_channels": hp.base_channels,
            "index_pairs": [list(p) for p in pairs],
        },
        "hyper_params": dataclasses.asdict(hp),
        "bands": bands,
        "classes": classes,
        "ignore_index": ignore_index,
        "band_mean": [float(v) for v in attrs["band_mean"]],
        "band_std": [float(v) for v in attrs["band_std"]],
        "input_units": dict(attrs.get("units") or {}),
        "class_weights": [float(v) for v in weights],
        "chip_size": int(train.x.shape[-1]),
        "train_chips": len(train.x),
        "val_chips": len(val.x),
        "best_epoch": best_epoch,
        "best_val_miou": best_miou,
        "epochs_run": len(history),
        "schedule_clock_from_epoch": clock_from_epoch,
        "seconds": seconds,
        "device": device.type,
        "device_name": _device_name(device),
        "amp_dtype": amp_name,
        "chip_route": chips.route,
        "steps_per_second": steps_per_second,
        "history": history,
        "weights": MODEL_WEIGHTS_NAME,
        "weights_sha256": sha256_file(weights_path),
        "torch_version": torch.__version__,
    }
    config_path = out_dir / MODEL_CONFIG_NAME
    write_json_atomic(config_path, config)
    return TrainResult(
        model_dir=out_dir,
        weights_path=weights_path,
        config_path=config_path,
        best_epoch=best_epoch,
        best_val_miou=best_miou,
        epochs_run=len(history),
        seconds=seconds,
        history=tuple(history),
        device=device.type,
        amp_dtype=amp_name,
        chip_route=chips.route,
        steps_per_second=steps_per_second,
        schedule_clock_from_epoch=clock_from_epoch,
    )


@dataclass(frozen=True)
class _TrainChips:
    """The train split where training runs: host arrays for the CPU, device tensors on a GPU."""

    host: ChipSplit
    x: torch.Tensor | None
    y: torch.Tensor | None
    route: str

    @classmethod
    def load(cls, chips_path: Path, host: ChipSplit, device: torch.device) -> _TrainChips:
        if device.type != "cuda":
            return cls(host, None, None, "cpu")
        chips = gpu.read_chips_to_gpu(chips_path, "train", device_id=device.index or 0)
        return cls(host, chips.x, chips.y, chips.route)

    def __len__(self) -> int:
        return len(self.host.x)

    def batch(self, idx: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chips ``idx`` as float32 images and int64 labels on the training device."""
        if self.x is None or self.y is None:
            xb = torch.from_numpy(self.host.x[idx].astype(np.float32))
            yb = torch.from_numpy(self.host.y[idx].astype(np.int64))
            return xb, yb
        sel = torch.as_tensor(idx, device=self.x.device)
        return self.x.index_select(0, sel), self.y.index_select(0, sel)


def _train_epoch(
    model: nn.Module,
    chips: _TrainChips,
    loss_fn: nn.Module,
    optimiser: torch.optim.Optimizer,
    schedule: Schedule,
    batch_size: int,
    rng: np.random.Generator,
    scaler: torch.amp.GradScaler | None,
    amp: bool,
    ema: AveragedModel | None = None,
) -> tuple[float, int]:
    """One pass over the train chips; returns the mean loss and the optimiser steps taken."""
    model.train()
    device = next(model.parameters()).device
    order = rng.permutation(len(chips))
    total, seen, steps = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])
        ops = rng.integers(0, DIHEDRAL_OPS, size=len(idx))
        xb, yb = augment_dihedral(*chips.batch(idx), ops)
        optimiser.zero_grad(set_to_none=True)
        image = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            loss = loss_fn(model(image), yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
        else:
            loss.backward()
            optimiser.step()
        schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        steps += 1
    return total / seen, steps
