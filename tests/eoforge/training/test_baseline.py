"""Tests of eoforge.training.baseline: features, seeded random forest, scene prediction with nodata."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import zarr
from eoforge_test_helpers import CLASSES  # type: ignore[import-not-found]
from eoforge_test_helpers import write_chip_store as shared_chip_store
from sklearn.ensemble import RandomForestClassifier

from eoforge.config import TrainSpec
from eoforge.errors import InputError
from eoforge.training.baseline import (
    NODATA_LABEL,
    feature_names,
    pixel_features,
    predict_scene,
    train_random_forest,
)
from eoforge.training.metrics import confusion_matrix, metrics_from_confusion

SPEC = TrainSpec(rf_n_estimators=20, rf_max_depth=10, rf_train_pixels=4000)
write_chip_store = partial(shared_chip_store, band_mean=[1000.0] * 4, band_std=[1000.0] * 4)


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chip_store(tmp_path_factory.mktemp("chips") / "chips.zarr")


@pytest.fixture(scope="module")
def forest(chips: Path) -> RandomForestClassifier:
    return train_random_forest(chips, SPEC)


def _test_chips(chips: Path) -> tuple[np.ndarray, np.ndarray]:
    g = zarr.open_group(str(chips), mode="r")
    return np.asarray(g["test/x"][...]), np.asarray(g["test/y"][...])  # type: ignore[index]


def test_pixel_features_are_bands_plus_indices() -> None:
    bands = np.array([[[100, 0]], [[200, 0]], [[300, 0]], [[900, 0]]], dtype=np.uint16)
    table = pixel_features(bands)
    assert feature_names() == ["blue", "green", "red", "nir", "ndvi", "ndwi"]
    assert table.shape == (2, 6)
    assert table.dtype == np.float32
    np.testing.assert_allclose(table[0], [100, 200, 300, 900, 0.5, -700 / 1100], rtol=1e-6)
    np.testing.assert_array_equal(table[1], 0)  # all-zero pixel: indices 0, not NaN


def test_pixel_features_without_red_nir_are_the_raw_bands() -> None:
    table = pixel_features(np.ones((2, 3, 3), np.uint16), band_names=("a", "b"))
    assert table.shape == (9, 2)


def test_pixel_features_reject_a_band_count_mismatch() -> None:
    with pytest.raises(InputError, match="bands must be"):
        pixel_features(np.ones((3, 4, 4), np.uint16))


def test_forest_is_accurate_on_the_synthetic_task(
    forest: RandomForestClassifier, chips: Path
) -> None:
    assert forest.n_estimators == SPEC.rf_n_estimators
    assert list(forest.classes_) == [0, 1, 2]
    x, y = _test_chips(chips)
    pred = np.stack([predict_scene(forest, chip) for chip in x])
    scores = metrics_from_confusion(confusion_matrix(y, pred, 3), CLASSES)
    assert scores["pixel_accuracy"] > 0.95
    assert scores["miou"] > 0.9


def test_forest_is_reproducible(forest: RandomForestClassifier, chips: Path) -> None:
    again = train_random_forest(chips, SPEC)
    x, _ = _test_chips(chips)
    np.testing.assert_array_equal(predict_scene(forest, x[0]), predict_scene(again, x[0]))
    np.testing.assert_array_equal(
        forest.predict_proba(pixel_features(x[1])), again.predict_proba(pixel_features(x[1]))
    )


def test_predict_scene_marks_nodata(forest: RandomForestClassifier, chips: Path) -> None:
    x, _ = _test_chips(chips)
    scene = x[0].copy()
    scene[2, 10, 20] = 0  # one band missing is enough
    pred = predict_scene(forest, scene)
    assert pred.shape == scene.shape[1:]
    assert pred.dtype == np.uint8
    assert (pred[:2, :2] == NODATA_LABEL).all()
    assert pred[10, 20] == NODATA_LABEL
    assert (pred[5:, 5:][pred[5:, 5:] != NODATA_LABEL] < 3).all()
    assert (predict_scene(forest, np.zeros((4, 8, 8), np.uint16)) == NODATA_LABEL).all()


def test_predict_scene_needs_the_fitted_features(forest: RandomForestClassifier) -> None:
    with pytest.raises(InputError, match="features"):
        predict_scene(forest, np.ones((4, 8, 8), np.uint16), band_names=("a", "b", "c", "d"))


def test_no_labelled_pixels_is_an_input_error(tmp_path: Path) -> None:
    chips = write_chip_store(tmp_path / "c.zarr", counts=(2, 1, 1))
    g = zarr.open_group(str(chips), mode="r+")
    g["train/y"][...] = 255  # type: ignore[index]
    with pytest.raises(InputError, match="no labelled pixels"):
        train_random_forest(chips, SPEC)
