"""Tests of eoforge.training.ops: dihedral augmentation, loss and schedule pieces."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from eoforge.training.ops import DIHEDRAL_OPS, Schedule, SegmentationLoss, augment_dihedral


def numpy_dihedral(a: np.ndarray, op: int) -> np.ndarray:
    """The reference: flip the x axis for op >= 4, then op % 4 quarter turns (numpy.rot90)."""
    if op >= 4:
        a = a[..., ::-1]
    return np.rot90(a, op % 4, axes=(-2, -1))


def test_each_op_matches_numpy_on_images_and_labels() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10_000, (DIHEDRAL_OPS, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 5, (DIHEDRAL_OPS, 6, 6)).astype(np.int64)
    ops = np.arange(DIHEDRAL_OPS)
    xs, ys = augment_dihedral(torch.from_numpy(x), torch.from_numpy(y), ops)
    for i, op in enumerate(ops):
        np.testing.assert_array_equal(xs[i].numpy(), numpy_dihedral(x[i], int(op)))
        np.testing.assert_array_equal(ys[i].numpy(), numpy_dihedral(y[i], int(op)))


def test_labels_move_with_the_pixels() -> None:
    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.integers(0, 5, (32, 8, 8)).astype(np.int64))
    x = torch.stack([y.float() * 100, y.float() * 7], 1)  # every band encodes the label
    xs, ys = augment_dihedral(x, y, rng.integers(0, DIHEDRAL_OPS, 32))
    assert torch.equal(xs[:, 0], ys.float() * 100) and torch.equal(xs[:, 1], ys.float() * 7)
    # values are only moved, never resampled
    assert torch.equal(xs.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_identity_op_leaves_chips_alone() -> None:
    x, y = torch.rand(3, 4, 5, 5), torch.randint(0, 3, (3, 5, 5))
    xs, ys = augment_dihedral(x, y, np.zeros(3, dtype=np.int64))
    assert torch.equal(xs, x) and torch.equal(ys, y)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 ops"):
        augment_dihedral(torch.zeros(3, 1, 4, 4), torch.zeros(3, 4, 4), np.zeros(2, np.int64))


def test_loss_is_computed_in_float32_for_low_precision_logits() -> None:
    loss_fn = SegmentationLoss(np.ones(3, np.float32), ignore_index=255, dice_weight=1.0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    full = loss_fn(logits, target)
    half = loss_fn(logits.to(torch.bfloat16), target)
    assert half.dtype == torch.float32
    assert float(half) == pytest.approx(float(full), rel=2e-2)


def _schedule(max_seconds: float) -> Schedule:
    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(optimiser, peak=0.01, warmup=0.1, total_steps=40, max_seconds=max_seconds)


def _lr(schedule: Schedule) -> float:
    return float(schedule.optimiser.param_groups[0]["lr"])


def test_schedule_follows_steps_whatever_the_clock() -> None:
    """While the run is on course, the rate is a pure function of the step count: a slow
    machine (sleeps between steps) gets the very same rates as a fast one."""
    fast, slow = _schedule(max_seconds=0.5), _schedule(max_seconds=0.5)
    rates_fast, rates_slow = [], []
    for _ in range(40):
        fast.step()
        time.sleep(0.02)  # 40 steps take 0.8 s: past the budget, but nobody asked the pace
        slow.step()
        rates_fast.append(_lr(fast))
        rates_slow.append(_lr(slow))
    assert rates_fast == rates_slow
    assert fast.progress() == 1.0 and fast.clock_from is None
    assert rates_fast[-1] == pytest.approx(0.01 * 1e-3)  # annealed to peak / 1000


def test_schedule_hands_over_to_the_clock_when_the_budget_cannot_hold_the_epochs() -> None:
    schedule = _schedule(max_seconds=0.3)
    for _ in range(10):
        schedule.step()
    assert not schedule.check_pace(epoch_seconds=0.001, epochs_left=3)  # on course
    assert schedule.clock_from is None
    before = schedule.progress()
    assert schedule.check_pace(epoch_seconds=1.0, epochs_left=3)  # 3 s more: overrun
    assert schedule.clock_from is not None
    assert schedule.progress() == pytest.approx(before, abs=0.05)  # no jump at the hand-over
    time.sleep(0.35)
    schedule.step()
    assert schedule.progress() == 1.0  # the clock reached the budget: fully annealed
    assert _lr(schedule) == pytest.approx(0.01 * 1e-3)
    assert schedule.check_pace(epoch_seconds=0.0, epochs_left=0)  # it keeps the lead
