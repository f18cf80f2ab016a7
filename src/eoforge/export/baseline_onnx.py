"""Export the random-forest baseline to ONNX so it is served by the same inference path as the net.

The exported graph has the network's interface (ADR 0001): input ``image`` float32
``(N, bands, H, W)`` raw DN, output ``logits`` float32 ``(N, classes, H, W)``. Inside, the pixels
are flattened to rows, given the same features as :func:`eoforge.training.baseline.pixel_features`
(bands + NDVI / NDWI), classified by the skl2onnx-converted forest, and its probabilities are
returned as log-probabilities over every class (a class the forest never saw gets ~log(1e-7)),
so ``eoforge.inference.predict.predict_scene`` serves it unchanged: softmax of log p is p again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from sklearn.ensemble import RandomForestClassifier

from eoforge.config import InferSpec
from eoforge.errors import ContractViolation, InputError
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME
from eoforge.io.atomic import sha256_file, staged_file
from eoforge.training.baseline import DEFAULT_BANDS, feature_names, pixel_features

__all__ = [
    "BASELINE_FORMAT",
    "PARITY_TOLERANCE",
    "BaselineExport",
    "baseline_config",
    "export_random_forest",
    "per_pixel_spec",
]

#: Version tag of the baseline's description (:func:`baseline_config`).
BASELINE_FORMAT = "eoforge-baseline/1"
#: Largest max |onnx - sklearn| probability difference the export accepts.
PARITY_TOLERANCE = 1e-5
#: Floor of the probabilities before the log: classes the forest gives 0 stay finite.
_PROB_FLOOR = 1e-7
_ML_OPSET = 3  # TreeEnsembleClassifier as onnxruntime has long supported it
#: The derived features of :func:`eoforge.training.baseline.pixel_features` as ONNX knows them:
#: name -> (a, b) for (a - b) / (a + b), 0 where a + b == 0. The parity check catches a drift.
_NORMALISED_DIFFERENCES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
}


@dataclass(frozen=True)
class BaselineExport:
    """What :func:`export_random_forest` wrote."""

    onnx_path: Path
    """The ONNX file (written atomically)."""
    sha256: str
    """sha256 of the ONNX file."""
    bands: tuple[str, ...]
    """Input bands, in order."""
    classes: tuple[str, ...]
    """Output classes, index = class value."""
    features: tuple[str, ...]
    """Per-pixel features the forest reads (:func:`eoforge.training.baseline.feature_names`)."""
    max_abs_diff: float | None
    """Largest |onnx - sklearn| probability difference on the parity sample (None: no sample)."""


def per_pixel_spec(spec: InferSpec) -> InferSpec:
    """The inference spec for a per-pixel model: same windows, no overlap.

    A per-pixel model gives the same answer for a pixel in every window, so overlap only
    repeats work.
    """
    return spec.model_copy(update={"overlap": 0})


def baseline_config(
    rf: RandomForestClassifier, bands: Sequence[str], classes: Sequence[str]
) -> dict[str, Any]:
    """A ``model.json``-like description of the forest (read by :func:`eoforge.export.mlm.model_item`)."""
    return {
        "format": BASELINE_FORMAT,
        "architecture": {"name": "random-forest", "in_channels": len(bands)},
        "framework": "scikit-learn",
        "framework_version": sklearn.__version__,
        "bands": list(bands),
        "classes": list(classes),
        "features": feature_names(bands),
        "forest_classes": [int(c) for c in rf.classes_],
        "hyper_params": {
            "n_estimators": int(rf.n_estimators),
            "max_depth": rf.max_depth,
            "random_state": rf.random_state,
        },
    }


def export_random_forest(
    rf: RandomForestClassifier,
    out_path: Path,
    bands: Sequence[str] = DEFAULT_BANDS,
    classes: Sequence[str] | None = None,
    *,
    sample: NDArray[Any] | None = None,
    opset: int = 17,
) -> BaselineExport:
    """Export a fitted forest as an image-to-logits ONNX model and check it against sklearn.

    Args:
        rf: a forest from :func:`eoforge.training.baseline.train_random_forest` (classes are class
            indices, features as :func:`eoforge.training.baseline.pixel_features` of ``bands``).
        out_path: where to write the ``.onnx`` file (its folder is created if needed).
        bands: the forest's input bands, in order.
        classes: every class name, index = class value (None: ``class0..`` up to the largest
            class the forest knows).
        sample: raw DN ``(C, H, W)`` or ``(N, C, H, W)``; when given, ONNX Runtime's
            probabilities on it must match ``rf.predict_proba`` within :data:`PARITY_TOLERANCE`.
        opset: default-domain opset of the graph.

    Returns:
        The :class:`BaselineExport`.

    Raises:
        InputError: the forest does not fit ``bands`` / ``classes``, or the sample is unusable.
        ContractViolation: the graph fails ``onnx.checker`` or parity (stage ``export``).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    band_names = list(bands)
    names = feature_names(band_names)
    unknown = [n for n in names[len(band_names) :] if n not in _NORMALISED_DIFFERENCES]
    if unknown:
        raise InputError(
            f"features {unknown} of eoforge.training.baseline have no ONNX form in eoforge.export.baseline_onnx; "
            "add them to _NORMALISED_DIFFERENCES."
        )
    if getattr(rf, "n_features_in_", None) != len(names):
        raise InputError(
            f"the forest was fitted on {getattr(rf, 'n_features_in_', '?')} features, the bands "
            f"{band_names} give {len(names)} ({names}); pass the bands it was trained on."
        )
    forest_classes = [int(c) for c in rf.classes_]
    if classes is None:
        classes = [f"class{i}" for i in range(max(forest_classes) + 1)]
    class_names = list(classes)
    if min(forest_classes) < 0 or max(forest_classes) >= len(class_names):
        raise InputError(
            f"the forest predicts class values {forest_classes}, outside 0..{len(class_names) - 1}"
            f" of classes {class_names}; pass the chip store's classes."
        )

    forest = convert_sklearn(
        rf,
        initial_types=[("features", FloatTensorType([None, len(names)]))],
        options={id(rf): {"zipmap": False}},
        target_opset={"": opset, "ai.onnx.ml": _ML_OPSET},
    )
    forest = onnx.compose.add_prefix(forest, "rf_")
    model = _wrap(forest, band_names, forest_classes, len(class_names), opset)
    onnx.helper.set_model_props(
        model,
        {
            "eoforge:kind": "random-forest-baseline",
            "eoforge:bands": json.dumps(band_names),
            "eoforge:classes": json.dumps(class_names),
            "eoforge:features": json.dumps(names),
        },
    )
    out_path = Path(out_path)
    max_abs_diff: float | None = None
    with staged_file(out_path) as tmp:
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ContractViolation(
                "export", [_failure("onnx_checker_passes", str(exc).splitlines()[0][:200], {})]
            ) from exc
        if sample is not None:
            max_abs_diff = _parity(tmp, rf, sample, band_names, forest_classes)
    return BaselineExport(
        onnx_path=out_path,
        sha256=sha256_file(out_path),
        bands=tuple(band_names),
        classes=tuple(class_names),
        features=tuple(names),
        max_abs_diff=max_abs_diff,
    )


def _wrap(
    forest: onnx.ModelProto,
    bands: list[str],
    forest_classes: list[int],
    num_classes: int,
    opset: int,
) -> onnx.ModelProto:
    """image (N, C, H, W) -> features (N*H*W, F) -> forest -> log p (N, K, H, W)."""
    c = len(bands)
    index = {name: i for i, name in enumerate(bands)}
    to_all = np.zeros((len(forest_classes), num_classes), np.float32)
    for row, value in enumerate(forest_classes):
        to_all[row, value] = 1.0  # forest column -> class value
    inits = [
        numpy_helper.from_array(np.array([-1, c], np.int64), "pix_shape"),
        numpy_helper.from_array(np.array([0, 2, 3], np.int64), "nhw_axes"),
        numpy_helper.from_array(np.array([num_classes], np.int64), "k_dim"),
        numpy_helper.from_array(np.array(_PROB_FLOOR, np.float32), "floor"),
        numpy_helper.from_array(to_all, "to_all_classes"),
    ]
    nodes = [
        helper.make_node("Transpose", [INPUT_NAME], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "pix_shape"], ["pixels"]),
    ]
    columns = ["pixels"]
    derived = feature_names(bands)[c:]  # in pixel_features' column order
    if derived:
        inits += [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ]
    for name in derived:
        a, b = _NORMALISED_DIFFERENCES[name]
        inits += [
            numpy_helper.from_array(np.array([index[a]], np.int64), f"{name}_a_idx"),
            numpy_helper.from_array(np.array([index[b]], np.int64), f"{name}_b_idx"),
        ]
        nodes += [
            helper.make_node("Gather", ["pixels", f"{name}_a_idx"], [f"{name}_a"], axis=1),
            helper.make_node("Gather", ["pixels", f"{name}_b_idx"], [f"{name}_b"], axis=1),
            helper.make_node("Sub", [f"{name}_a", f"{name}_b"], [f"{name}_num"]),
            helper.make_node("Add", [f"{name}_a", f"{name}_b"], [f"{name}_den"]),
            helper.make_node("Equal", [f"{name}_den", "zero"], [f"{name}_den0"]),
            helper.make_node("Where", [f"{name}_den0", "one", f"{name}_den"], [f"{name}_safe"]),
            helper.make_node("Div", [f"{name}_num", f"{name}_safe"], [f"{name}_ratio"]),
            helper.make_node("Where", [f"{name}_den0", "zero", f"{name}_ratio"], [name]),
        ]
        columns.append(name)
    nodes.append(helper.make_node("Concat", columns, ["rf_features"], axis=1))
    nodes += list(forest.graph.node)
    nodes += [
        helper.make_node("MatMul", ["rf_probabilities", "to_all_classes"], ["probs"]),
        helper.make_node("Max", ["probs", "floor"], ["probs_floored"]),
        helper.make_node("Log", ["probs_floored"], ["log_probs"]),
        helper.make_node("Shape", [INPUT_NAME], ["image_shape"]),
        helper.make_node("Gather", ["image_shape", "nhw_axes"], ["nhw"], axis=0),
        helper.make_node("Concat", ["nhw", "k_dim"], ["nhwk"], axis=0),
        helper.make_node("Reshape", ["log_probs", "nhwk"], ["log_probs_nhwk"]),
        helper.make_node("Transpose", ["log_probs_nhwk"], [OUTPUT_NAME], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "eoforge_random_forest",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, "H", "W"])],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["N", num_classes, "H", "W"]
            )
        ],
        initializer=inits + list(forest.graph.initializer),
    )
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid("ai.onnx.ml", _ML_OPSET),
        ],
        producer_name="eoforge",
    )
    model.ir_version = min(int(forest.ir_version) or 8, 10)
    return model


def _parity(
    path: Path,
    rf: RandomForestClassifier,
    sample: NDArray[Any],
    bands: list[str],
    forest_classes: list[int],
) -> float:
    arr = np.asarray(sample)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != len(bands) or 0 in arr.shape:
        raise InputError(
            f"parity sample must be (C, H, W) or (N, C, H, W) raw DN with C = {len(bands)}, got "
            f"shape {np.asarray(sample).shape}."
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (log_p,) = session.run([OUTPUT_NAME], {INPUT_NAME: arr.astype(np.float32)})
    onnx_p = np.exp(np.asarray(log_p))[:, forest_classes]  # (N, K_rf, H, W)
    expected = np.concatenate([rf.predict_proba(pixel_features(chip, bands)) for chip in arr])
    actual = onnx_p.transpose(0, 2, 3, 1).reshape(-1, len(forest_classes))
    # the floor turns exact zeros into 1e-7: compare above it
    diff = float(np.max(np.abs(np.where(expected < _PROB_FLOOR, 0.0, actual - expected))))
    if not diff <= PARITY_TOLERANCE:
        raise ContractViolation(
            "export",
            [
                _failure(
                    "onnx_sklearn_max_abs_prob_diff_below",
                    diff,
                    {"max_abs_diff": PARITY_TOLERANCE, "pixels": int(actual.shape[0])},
                )
            ],
        )
    return diff


def _failure(expectation: str, offending: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"expectation": expectation, "column": None, "kwargs": kwargs, "offending": offending}
