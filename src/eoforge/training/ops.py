"""The pieces of the training loop: loss, learning-rate schedule and augmentation.

Augmentation is the dihedral group only (flips and 90-degree rotations): the only geometric
transforms that keep multispectral values physically meaningful (no resampling, no colour
jitter). It runs on torch tensors, on whichever device holds the batch.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

__all__ = ["DIHEDRAL_OPS", "Schedule", "SegmentationLoss", "augment_dihedral"]

#: Number of dihedral operations: op = 4 * flip + quarter turns (0..7).
DIHEDRAL_OPS = 8


class SegmentationLoss(nn.Module):
    """Class-weighted cross-entropy plus ``dice_weight`` x soft Dice (ignored pixels masked)."""

    weights: torch.Tensor

    def __init__(self, weights: NDArray[np.float32], ignore_index: int, dice_weight: float) -> None:
        super().__init__()
        self.register_buffer("weights", torch.from_numpy(weights))
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # under CUDA autocast the network returns bf16 / fp16
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


class Schedule:
    """Warm-up then cosine decay of the learning rate over training progress in [0, 1].

    Progress is the fraction of optimiser steps done: a pure function of the step count, so the
    schedule (and with it the trained weights) is exactly reproducible, whatever the machine's
    speed, as long as the run is on course to finish within ``max_seconds``. The trainer checks
    that at every epoch end (:meth:`check_pace`). Once the remaining epochs, at the pace of the
    last one, would overrun the budget, the wall clock leads from then on: progress moves
    linearly from where it was to 1 at ``max_seconds`` (or by steps, where that is further), so
    the rate still anneals before the budget stops training instead of stopping it at a high
    learning rate. From then on the result depends on the machine's speed.
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
        #: (seconds since start, progress) when the clock took the lead; None while it has not
        self.clock_from: tuple[float, float] | None = None
        self._apply(0.0)

    def progress(self) -> float:
        """Fraction of the schedule done, in [0, 1]."""
        by_steps = self.steps / self.total_steps
        if self.clock_from is None:
            return min(1.0, by_steps)
        t0, p0 = self.clock_from
        elapsed = time.perf_counter() - self.started
        by_clock = p0 + (1 - p0) * (elapsed - t0) / max(self.max_seconds - t0, 1e-9)
        return min(1.0, max(by_steps, by_clock))

    def check_pace(self, epoch_seconds: float, epochs_left: int) -> bool:
        """At an epoch end: if ``epochs_left`` more epochs of ``epoch_seconds`` each would end
        after ``max_seconds``, let the clock lead from now on. Returns whether it leads."""
        if self.clock_from is None:
            elapsed = time.perf_counter() - self.started
            if elapsed + epochs_left * epoch_seconds > self.max_seconds:
                self.clock_from = (elapsed, self.progress())
        return self.clock_from is not None

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


def augment_dihedral(
    x: torch.Tensor, y: torch.Tensor, ops: NDArray[np.integer]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply dihedral op ``ops[i]`` to chip ``i`` of ``x`` ``(n, bands, s, s)`` and ``y`` ``(n, s, s)``.

    Op ``k`` flips the last (x) axis when ``k >= 4``, then turns ``k % 4`` quarter turns
    counter-clockwise, as ``numpy.rot90(a, k % 4, axes=(-2, -1))``. Chips sharing an op are
    transformed together, so a batch costs at most eight tensor operations on any device.
    """
    if len(ops) != len(x) or len(x) != len(y):
        raise ValueError(f"augment_dihedral: {len(x)} images, {len(y)} labels, {len(ops)} ops")
    ops_t = torch.as_tensor(np.asarray(ops, dtype=np.int64), device=x.device)
    xs, ys = torch.empty_like(x), torch.empty_like(y)
    for op in range(DIHEDRAL_OPS):
        sel = (ops_t == op).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        xi, yi = x.index_select(0, sel), y.index_select(0, sel)
        if op >= 4:
            xi, yi = xi.flip(-1), yi.flip(-1)
        turns = op % 4
        if turns:
            xi, yi = xi.rot90(turns, (-2, -1)), yi.rot90(turns, (-2, -1))
        xs.index_copy_(0, sel, xi.contiguous())
        ys.index_copy_(0, sel, yi.contiguous())
    return xs, ys
