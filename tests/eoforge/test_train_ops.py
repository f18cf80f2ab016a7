"""Tests of eoforge.train_ops: dihedral augmentation, loss and schedule pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eoforge.train_ops import DIHEDRAL_OPS, SegmentationLoss, augment_dihedral


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
