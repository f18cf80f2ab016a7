from __future__ import annotations

import numpy as np

from eoforge.config import LabelSpec
from eoforge.labels import scl_to_classes


def test_default_grouping() -> None:
    scl = np.arange(12, dtype=np.uint8)
    got = scl_to_classes(scl, LabelSpec())
    #           0    1    2    3  4  5  6  7    8  9 10  11
    expected = [255, 255, 255, 4, 0, 1, 2, 255, 3, 3, 3, 255]
    assert got.tolist() == expected
