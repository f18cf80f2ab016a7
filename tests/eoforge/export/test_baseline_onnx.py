"""Tests of eoforge.export.baseline_onnx: the forest exported to ONNX and served by eoforge.inference.predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.ensemble import RandomForestClassifier

from eoforge.config import InferSpec
from eoforge.errors import ContractViolation, InputError
from eoforge.export import baseline_onnx
from eoforge.export.baseline_onnx import baseline_config, export_random_forest, per_pixel_spec
from eoforge.inference.predict import predict_scene
from eoforge.inference.session import open_session
from eoforge.training.baseline import pixel_features
from eoforge.training.baseline import predict_scene as rf_predict_scene

CLASSES = ["vegetation", "bare", "water", "cloud", "shadow"]


def synthetic_scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth fields of reflectance, so classes form regions like in a real scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    bands = [
        1000
        + 4000 * (0.5 + 0.5 * np.sin(6 * xx * (k + 1) + 3 * yy + k))
        + rng.normal(0, 80, (h, w))
        for k in range(4)
    ]
    return np.clip(np.stack(bands), 1, 10000).astype(np.uint16)


def labels_for(bands: np.ndarray) -> np.ndarray:
    """A rule on NDVI / brightness, with classes 0, 2 and 4 only (the forest sees a subset)."""
    f = pixel_features(bands)
    ndvi, bright = f[:, 4], f[:, :3].mean(axis=1)
    y = np.where(ndvi > 0.1, 0, np.where(bright > 3500, 4, 2)).astype(np.uint8)
    return y


@pytest.fixture(scope="module")
def forest() -> RandomForestClassifier:
    train = synthetic_scene(64, 64, seed=0)
    rf = RandomForestClassifier(n_estimators=12, max_depth=8, random_state=0, n_jobs=1)
    rf.fit(pixel_features(train), labels_for(train))
    return rf


@pytest.fixture(scope="module")
def exported(forest: RandomForestClassifier, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("rf") / "baseline.onnx"
    return export_random_forest(
        forest, out, classes=CLASSES, sample=synthetic_scene(32, 48, seed=1)
    )


def test_probabilities_match_sklearn(forest: RandomForestClassifier, exported: Any) -> None:
    assert exported.max_abs_diff is not None and exported.max_abs_diff < 1e-5
    assert exported.features == ("blue", "green", "red", "nir", "ndvi", "ndwi")
    bands = synthetic_scene(40, 56, seed=2)
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    (log_p,) = session.run(["logits"], {"image": bands[None].astype(np.float32)})
    assert log_p.shape == (1, 5, 40, 56) and log_p.dtype == np.float32
    probs = np.exp(log_p[0]).reshape(5, -1).T
    expected = forest.predict_proba(pixel_features(bands))  # columns: classes 0, 2, 4
    np.testing.assert_allclose(probs[:, [0, 2, 4]], expected, atol=1e-5)
    assert probs[:, [1, 3]].max() < 1e-6  # classes the forest never saw


def test_served_by_the_inference_path_unchanged(
    forest: RandomForestClassifier, exported: Any
) -> None:
    session = open_session(exported.onnx_path, threads=1)  # image -> logits, checked
    bands = synthetic_scene(300, 517, seed=3)
    bands[:, :20, :30] = 0  # nodata
    spec = per_pixel_spec(InferSpec(window=128, overlap=32, batch_size=4))
    assert spec.overlap == 0 and spec.window == 128
    served = predict_scene(session, bands, spec)
    np.testing.assert_array_equal(served, rf_predict_scene(forest, bands))
    # with overlap too: blending log-probabilities of a per-pixel model changes nothing
    np.testing.assert_array_equal(
        predict_scene(session, bands, InferSpec(window=128, overlap=32)), served
    )


def test_metadata_and_graph(exported: Any) -> None:
    model = onnx.load(str(exported.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["eoforge:kind"] == "random-forest-baseline"
    assert json.loads(props["eoforge:bands"]) == ["blue", "green", "red", "nir"]
    assert json.loads(props["eoforge:classes"]) == CLASSES
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_bands_without_indices(tmp_path: Path) -> None:
    train = synthetic_scene(32, 32, seed=4)[:3]
    bands = ["blue", "green", "red"]  # no nir: no NDVI / NDWI features
    y = (train[2] > 3000).astype(np.uint8).reshape(-1)
    rf = RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(
        pixel_features(train, bands), y
    )
    res = export_random_forest(rf, tmp_path / "m.onnx", bands, sample=train)
    assert res.features == tuple(bands) and res.classes == ("class0", "class1")
    pred = predict_scene(
        open_session(res.onnx_path, threads=1), train, InferSpec(window=32, overlap=8)
    )
    np.testing.assert_array_equal(pred, rf_predict_scene(rf, train, band_names=bands))


def test_refuses_mismatches(forest: RandomForestClassifier, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="features"):
        export_random_forest(forest, tmp_path / "m.onnx", ["blue", "green", "red"])
    with pytest.raises(InputError, match="class values"):
        export_random_forest(forest, tmp_path / "m.onnx", classes=["a", "b"])
    with pytest.raises(InputError, match="parity sample"):
        export_random_forest(forest, tmp_path / "m.onnx", sample=np.zeros((3, 8, 8), np.uint16))
    assert not (tmp_path / "m.onnx").exists()


def test_parity_failure_is_a_contract_violation(
    forest: RandomForestClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(baseline_onnx, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ContractViolation, match="onnx_sklearn_max_abs_prob_diff_below"):
        export_random_forest(forest, tmp_path / "m.onnx", sample=synthetic_scene(8, 8, seed=5))
    assert not list(tmp_path.iterdir())  # nothing that reads as a model is left


def test_baseline_config(forest: RandomForestClassifier) -> None:
    config = baseline_config(forest, ["blue", "green", "red", "nir"], CLASSES)
    assert config["architecture"]["name"] == "random-forest"
    assert config["framework"] == "scikit-learn" and config["forest_classes"] == [0, 2, 4]
    assert config["hyper_params"]["n_estimators"] == 12
    json.dumps(config)  # serialisable
