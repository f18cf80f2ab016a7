"""Train the segmentation network on a chip store and save / load it as safetensors + JSON.

Training is seeded and runs on CPU: random flips / 90-degree rotations (the only
augmentations that keep multispectral values physically meaningful), class-weighted
cross-entropy plus soft Dice against class imbalance, AdamW with a warm-up + cosine learning-rate
schedule, validation mIoU every epoch on the spatially held-out ``val`` split, best-checkpoint
selection and early stopping on it. The model directory layout is described in ADR 0001.

Same seed, same chip store, same thread count -> same weights and metrics, as long as the
machine is fast enough to run ``max_epochs`` within ``max_seconds``. When it is not, the
schedule follows the wall clock (so the learning rate still anneals within the budget) and the
result depends on the machine's speed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from eoforge.chips import read_split
from eoforge.config import TrainSpec
from eoforge.errors import InputError
from eoforge.evaluate import confusion_matrix, metrics_from_confusion
from eoforge.models import ARCHITECTURE, DEPTH, build_model, check_window, index_pairs_for
from eoforge.storage import sha256_file, staged_file, write_json_atomic

__all__ = [
    "MODEL_CONFIG_NAME",
    "MODEL_FORMAT",
    "MODEL_WEIGHTS_NAME",
    "ChipSplit",
    "TrainHyperParams",
    "TrainResult",
    "class_weights",
    "evaluate",
    "load_model",
    "read_chip_split",
    "read_chip_store_attrs",
    "read_model_config",
    "train_model",
]

#: File name of the weights inside a model directory.
MODEL_WEIGHTS_NAME = "model.safetensors"
#: File name of the architecture / hyper-parameter record inside a model directory.
MODEL_CONFIG_NAME = "model.json"
#: Version tag written to and required in ``model.json``.
MODEL_FORMAT = "eoforge-model/1"

_SAFETENSORS_MAX_HEADER = 100_000_000


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
    """Feed the network NDVI / NDWI computed from the raw bands (see eoforge.models)."""

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
    """One record per epoch: epoch, train_loss, val_loss, val_miou, val_accuracy, lr, seconds."""


@dataclass(frozen=True)
class ChipSplit:
    """One split of a chip store, in memory."""

    x: NDArray[np.uint16]
    """Raw DN, ``(n, bands, size, size)``."""
    y: NDArray[np.uint8]
    """Class indices, ``(n, size, size)``, ignore_index where unlabelled."""


def read_chip_store_attrs(chips_path: Path) -> dict[str, Any]:
    """Root attributes of a chip store (bands, classes, ignore_index, band_mean, band_std, ...).

    Raises:
        InputError: the store is missing or lacks a required attribute.
    """
    root = _open_store(chips_path)
    attrs = dict(root.attrs)
    missing = [
        k for k in ("bands", "classes", "ignore_index", "band_mean", "band_std") if k not in attrs
    ]
    if missing:
        raise InputError(
            f"chip store '{chips_path}' lacks root attributes {missing} (ADR 0001); "
            "rebuild it with the chips stage."
        )
    return attrs


def read_chip_split(chips_path: Path, split: str) -> ChipSplit:
    """Read one split (``train``, ``val`` or ``test``) of a chip store into memory.

    Raises:
        InputError: the split is missing or its arrays have the wrong dtype / shape.
    """
    _open_store(chips_path)
    try:
        x, y = read_split(chips_path, split)
    except (KeyError, AssertionError, FileNotFoundError) as exc:
        raise InputError(
            f"chip store '{chips_path}' has no split '{split}' with arrays x and y; "
            "rebuild it with the chips stage."
        ) from exc
    if (
        x.dtype != np.uint16
        or x.ndim != 4
        or y.dtype != np.uint8
        or y.shape != (x.shape[0], *x.shape[2:])
    ):
        raise InputError(
            f"chip store '{chips_path}' split '{split}': expected x uint16 (n, bands, s, s) and "
            f"y uint8 (n, s, s), got x {x.dtype}{x.shape} and y {y.dtype}{y.shape}; "
            "rebuild it with the chips stage."
        )
    return ChipSplit(x=x, y=y)


def class_weights(
    y: NDArray[np.uint8], num_classes: int, ignore_index: int, power: float
) -> NDArray[np.float32]:
    """Cross-entropy class weights ``frequency ** -power``, scaled to average 1 per pixel.

    Classes absent from ``y`` get weight 0 (they contribute no pixels anyway).
    """
    counts = np.bincount(y[y != ignore_index].ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(int(counts.sum()), 1)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = freq > 0
    weights[present] = freq[present] ** -power
    scale = float((freq * weights).sum())
    if scale > 0:
        weights /= scale
    return weights.astype(np.float32)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: ChipSplit,
    class_names: Sequence[str],
    ignore_index: int = 255,
    batch_size: int = 64,
    loss_fn: nn.Module | None = None,
) -> tuple[dict[str, Any], float]:
    """Score a model on chips.

    Args:
        model: the network (put in eval mode here).
        split: chips to score.
        class_names: the K class names, index = class value.
        ignore_index: label value of unlabelled pixels.
        batch_size: chips per forward pass.
        loss_fn: also compute the mean loss with this criterion.

    Returns:
        The :func:`eoforge.evaluate.metrics_from_confusion` dict (``miou``,
        ``pixel_accuracy``, per-class scores) and the mean loss (NaN without ``loss_fn``).
    """
    model.eval()
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    loss_sum, batches = 0.0, 0
    for start in range(0, len(split.x), batch_size):
        xb = torch.from_numpy(split.x[start : start + batch_size].astype(np.float32))
        yb = split.y[start : start + batch_size]
        logits = model(xb)
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, torch.from_numpy(yb.astype(np.int64))))
            batches += 1
        pred = logits.argmax(1).numpy().astype(np.uint8)
        cm += confusion_matrix(yb, pred, k, ignore_index)
    metrics = metrics_from_confusion(cm, class_names)
    return metrics, (loss_sum / batches if batches else float("nan"))


class _SegmentationLoss(nn.Module):
    """Class-weighted cross-entropy plus ``dice_weight`` x soft Dice (ignored pixels masked)."""

    weights: torch.Tensor

    def __init__(self, weights: NDArray[np.float32], ignore_index: int, dice_weight: float) -> None:
        super().__init__()
        self.register_buffer("weights", torch.from_numpy(weights))
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target, weight=self.weights, ignore_index=self.ignore_index)
        if self.dice_weight > 0:
            num_classes = logits.shape[1]
            valid = (target != self.ignore_index).unsqueeze(1).to(logits.dtype)
            probs = logits.softmax(1) * valid
            onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes)
            onehot = onehot.permute(0, 3, 1, 2).to(logits.dtype) * valid
            inter = (probs * onehot).sum((0, 2, 3))
            denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
            dice = (2 * inter + 1.0) / (denom + 1.0)
            loss = loss + self.dice_weight * (1 - dice.mean())
        return loss


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

    started = time.perf_counter()
    with _torch_runtime(hp.threads):
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
        # NHWC runs the CPU (oneDNN) convolutions ~25% faster than NCHW here.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        weights = class_weights(train.y, len(classes), ignore_index, hp.class_weight_power)
        loss_fn = _SegmentationLoss(weights, ignore_index, hp.dice_weight)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay
        )
        steps_per_epoch = -(-len(train.x) // hp.batch_size)
        schedule = _Schedule(
            optimiser,
            hp.learning_rate,
            hp.warmup_fraction,
            hp.max_epochs * steps_per_epoch,
            hp.max_seconds,
        )
        history: list[dict[str, float]] = []
        best_state: dict[str, torch.Tensor] = {}
        best_miou, best_epoch, longest_epoch = -1.0, 0, 0.0
        with _progress_bar(progress, hp.max_epochs) as advance:
            for epoch in range(1, hp.max_epochs + 1):
                elapsed = time.perf_counter() - started
                if epoch > 1 and elapsed + longest_epoch > hp.max_seconds:
                    break
                epoch_start = time.perf_counter()
                lr = optimiser.param_groups[0]["lr"]
                train_loss = _train_epoch(
                    model, train, loss_fn, optimiser, schedule, hp.batch_size, rng
                )
                val_metrics, val_loss = evaluate(model, val, classes, ignore_index, loss_fn=loss_fn)
                val_miou = float(val_metrics["miou"] or 0.0)
                longest_epoch = max(longest_epoch, time.perf_counter() - epoch_start)
                record = {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_miou": val_miou,
                    "val_accuracy": float(val_metrics["pixel_accuracy"] or 0.0),
                    "lr": float(lr),
                    "seconds": time.perf_counter() - started,
                }
                history.append(record)
                if val_miou > best_miou:
                    best_miou, best_epoch = val_miou, epoch
                    best_state = {
                        k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
                    }
                advance(epoch, record, best_miou)
                if epoch - best_epoch >= hp.patience:
                    break
    seconds = time.perf_counter() - started

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
        "class_weights": [float(v) for v in weights],
        "chip_size": int(train.x.shape[-1]),
        "train_chips": len(train.x),
        "val_chips": len(val.x),
        "best_epoch": best_epoch,
        "best_val_miou": best_miou,
        "epochs_run": len(history),
        "seconds": seconds,
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
    )


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The ``model.json`` of a model directory.

    Raises:
        InputError: it is missing, not JSON, or not an eoforge model record.
    """
    path = Path(model_dir) / MODEL_CONFIG_NAME
    if not path.is_file():
        raise InputError(
            f"model directory '{model_dir}' has no {MODEL_CONFIG_NAME}; pass a directory written "
            "by the train stage."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON ({exc}); retrain the model.") from exc
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise InputError(
            f"'{path}' is not a {MODEL_FORMAT} record; retrain the model with this eoforge version."
        )
    return config


def load_model(model_dir: Path) -> nn.Module:
    """Rebuild a trained network from ``model.json`` + ``model.safetensors``, in eval mode.

    Only safetensors weights are read; a pickle (``torch.save`` file) is refused, never
    unpickled, because unpickling runs arbitrary code.

    Raises:
        InputError: the files are missing, the weights are not safetensors, their sha256
            differs from the one recorded, or they do not match the recorded architecture.
    """
    config = read_model_config(model_dir)
    weights_name = str(config.get("weights", MODEL_WEIGHTS_NAME))
    weights_path = Path(model_dir) / weights_name
    if Path(weights_name).name != weights_name or not weights_name.endswith(".safetensors"):
        raise InputError(
            f"model.json in '{model_dir}' names weights '{weights_name}': only a .safetensors "
            "file inside the model directory is accepted (pickled checkpoints are refused)."
        )
    if not weights_path.is_file():
        raise InputError(f"model weights '{weights_path}' do not exist; retrain the model.")
    _require_safetensors(weights_path)
    expected_sha = config.get("weights_sha256")
    if expected_sha is not None and sha256_file(weights_path) != expected_sha:
        raise InputError(
            f"model weights '{weights_path}' do not match the sha256 in model.json (a training "
            "run was interrupted or the files were mixed); retrain the model."
        )
    try:
        state = load_file(str(weights_path))
    except SafetensorError as exc:
        raise InputError(
            f"model weights '{weights_path}' are not valid safetensors: {exc}"
        ) from exc
    arch = config.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE or arch.get("depth") != DEPTH:
        found = (arch.get("name"), arch.get("depth")) if isinstance(arch, dict) else arch
        raise InputError(
            f"model in '{model_dir}' has architecture {found!r}; this eoforge builds "
            f"{ARCHITECTURE!r} of depth {DEPTH}: retrain the model."
        )
    try:
        model = build_model(
            int(arch["in_channels"]),
            int(arch["num_classes"]),
            int(arch["base_channels"]),
            config["band_mean"],
            config["band_std"],
            [(int(a), int(b)) for a, b in arch.get("index_pairs", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"model.json in '{model_dir}' lacks or garbles {exc}; retrain the model."
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"weights '{weights_path}' do not fit the architecture in model.json: {exc}"
        ) from exc
    return model.eval()


def _require_safetensors(path: Path) -> None:
    """Refuse a file that does not start like safetensors (8-byte length + JSON header)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or not 0 < size < _SAFETENSORS_MAX_HEADER or head[8:9] != b"{":
        kind = (
            "a zip/pickle torch checkpoint"
            if head[:2] in (b"PK", b"\x80\x02")
            else "not safetensors"
        )
        raise InputError(
            f"model weights '{path}' are {kind}; eoforge only loads safetensors (never pickles). "
            "Re-save the state dict with safetensors.torch.save_file or retrain."
        )


class _Schedule:
    """Warm-up then cosine decay of the learning rate over training progress in [0, 1].

    Progress is the larger of the fraction of optimiser steps done and the fraction of
    ``max_seconds`` used. On a machine fast enough for ``max_epochs`` the step fraction always
    leads and the schedule is exactly reproducible; on a slower (or shared) one the wall clock
    leads, so the rate still anneals before the budget stops training instead of stopping it
    at a high learning rate.
    """

    _START = 0.04  # warm-up starts at peak / 25 (as torch's OneCycleLR)
    _END = 1e-3  # and the decay ends at peak / 1000

    def __init__(
        self,
        optimiser: torch.optim.Optimizer,
        peak: float,
        warmup: float,
        total_steps: int,
        max_seconds: float,
    ) -> None:
        self.optimiser = optimiser
        self.peak = peak
        self.warmup = warmup
        self.total_steps = max(total_steps, 1)
        self.max_seconds = max_seconds
        self.steps = 0
        self.started = time.perf_counter()
        self._apply(0.0)

    def progress(self) -> float:
        """Fraction of the schedule done, in [0, 1]."""
        by_steps = self.steps / self.total_steps
        by_clock = (time.perf_counter() - self.started) / self.max_seconds
        return min(1.0, max(by_steps, by_clock))

    def step(self) -> None:
        """Advance one optimiser step and set the learning rate for the next."""
        self.steps += 1
        self._apply(self.progress())

    def _apply(self, p: float) -> None:
        if p < self.warmup:
            factor = self._START + (1 - self._START) * p / self.warmup
        else:
            cosine = 0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup)))
            factor = self._END + (1 - self._END) * cosine
        for group in self.optimiser.param_groups:
            group["lr"] = self.peak * factor


def _train_epoch(
    model: nn.Module,
    train: ChipSplit,
    loss_fn: nn.Module,
    optimiser: torch.optim.Optimizer,
    schedule: _Schedule,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    model.train()
    order = rng.permutation(len(train.x))
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start : start + batch_size])
        xb, yb = _augment(train.x[idx], train.y[idx], rng)
        optimiser.zero_grad(set_to_none=True)
        image = torch.from_numpy(xb).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(image), torch.from_numpy(yb))
        loss.backward()
        optimiser.step()
        schedule.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / seen


def _augment(
    x: NDArray[np.uint16], y: NDArray[np.uint8], rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Random flip + 90-degree rotation per chip (dihedral group: no resampling of values)."""
    xs = np.empty(x.shape, dtype=np.float32)
    ys = np.empty(y.shape, dtype=np.int64)
    ops = rng.integers(0, 8, size=len(x))
    for i, op in enumerate(ops):
        xi, yi = x[i], y[i]
        if op >= 4:
            xi, yi = xi[:, :, ::-1], yi[:, ::-1]
        k = int(op % 4)
        xs[i] = np.rot90(xi, k, axes=(1, 2))
        ys[i] = np.rot90(yi, k, axes=(0, 1))
    return xs, ys


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _torch_runtime(threads: int | None) -> Iterator[None]:
    """Set threads and deterministic algorithms for the block; restore torch's state after."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads or os.cpu_count() or 1)
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


def _open_store(chips_path: Path) -> zarr.Group:
    if not Path(chips_path).exists():
        raise InputError(
            f"chip store '{chips_path}' does not exist; run the chips stage first or fix the path."
        )
    try:
        return zarr.open_group(str(chips_path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-group path
        raise InputError(f"'{chips_path}' is not a Zarr chip store: {exc}") from exc
