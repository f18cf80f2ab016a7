"""Tests of eoforge.chips.masks: boolean tile masks held as bits."""

from __future__ import annotations

import numpy as np
import pytest

from eoforge.chips.masks import PackedMask


@pytest.mark.parametrize("width", [1, 8, 13, 64, 67])
def test_rows_unpack_exactly(width: int) -> None:
    mask = np.random.default_rng(width).random((2, 21, width)) < 0.5
    packed = PackedMask.of(mask)
    assert packed.shape == mask.shape and packed.size == mask.size
    assert packed.bits.nbytes == 2 * 21 * ((width + 7) // 8)  # a bit per pixel (padded rows)
    np.testing.assert_array_equal(packed.to_array(), mask)
    np.testing.assert_array_equal(packed.rows(5, 12), mask[:, 5:12])
    assert packed.rows(5, 12).dtype == np.bool_


def test_from_strips_packs_each_strip_and_checks_its_shape() -> None:
    mask = np.random.default_rng(0).random((3, 40, 30)) < 0.3
    strips = [(top, min(top + 16, 40), mask[:, top : top + 16]) for top in range(0, 40, 16)]
    np.testing.assert_array_equal(PackedMask.from_strips(mask.shape, strips).to_array(), mask)
    with pytest.raises(ValueError, match="do not fit"):
        PackedMask.from_strips(mask.shape, [(0, 16, mask[:, :15])])
