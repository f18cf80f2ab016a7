"""Tests of eoforge.training.metrics against hand-computed examples and a brute-force count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eoforge.errors import InputError
from eoforge.training import metrics as evaluate
from eoforge.training.metrics import confusion_matrix, metrics_from_confusion

NAMES = ["vegetation", "bare", "water"]


def test_confusion_matrix_hand_example() -> None:
    y_true = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    y_pred = np.array([[0, 1, 1], [1, 255, 0]], np.uint8)
    # (2, 255): no prediction (input nodata) -> excluded; (255, 0): unlabelled -> excluded
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 0, 0]])


def test_metrics_hand_example() -> None:
    cm = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, NAMES)
    assert m["per_class_iou"] == {"vegetation": 0.5, "bare": pytest.approx(2 / 3), "water": None}
    assert m["miou"] == pytest.approx((0.5 + 2 / 3) / 2)  # water has no support: left out
    assert m["pixel_accuracy"] == 0.75
    assert m["per_class_precision"] == {
        "vegetation": 1.0,
        "bare": pytest.approx(2 / 3),
        "water": None,
    }
    assert m["per_class_recall"] == {"vegetation": 0.5, "bare": 1.0, "water": None}
    assert m["per_class_f1"] == {"vegetation": pytest.approx(2 / 3), "bare": 0.8, "water": None}
    assert m["support"] == {"vegetation": 2, "bare": 2, "water": 0}
    assert m["num_pixels"] == 4
    assert json.loads(json.dumps(m)) == m  # JSON-ready


def test_metrics_class_predicted_but_never_labelled() -> None:
    cm = np.array([[3, 1], [0, 0]])  # one vegetation pixel predicted as water, no true water
    m = metrics_from_confusion(cm, ["vegetation", "water"])
    assert m["per_class_iou"] == {"vegetation": 0.75, "water": 0.0}  # support via prediction
    assert m["miou"] == pytest.approx(0.375)
    assert m["per_class_recall"]["water"] is None and m["per_class_precision"]["water"] == 0.0
    assert m["per_class_f1"]["water"] == 0.0


def test_metrics_empty_matrix() -> None:
    m = metrics_from_confusion(np.zeros((2, 2), np.int64), ["a", "b"])
    assert m["miou"] is None and m["pixel_accuracy"] is None and m["num_pixels"] == 0


def test_confusion_matrix_matches_brute_force_across_chunks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evaluate, "_CHUNK", 1000)  # force several passes
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 10_007).astype(np.uint8)
    y_pred = rng.integers(0, 5, 10_007).astype(np.uint8)
    y_true[rng.random(10_007) < 0.1] = 255
    y_pred[rng.random(10_007) < 0.1] = 255
    expected = np.zeros((5, 5), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        if t != 255 and p != 255:
            expected[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 5), expected)


def test_bad_inputs_are_input_errors() -> None:
    with pytest.raises(InputError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(InputError, match=r"\[3\] outside 0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(InputError, match="integer"):
        confusion_matrix(np.array([0.0]), np.array([0]), 3)
    with pytest.raises(InputError, match="class names"):
        metrics_from_confusion(np.zeros((2, 2), np.int64), NAMES)
