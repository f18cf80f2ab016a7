"""Few-label classifiers on an embedding field: kNN and a linear probe (scikit-learn), exported
through skl2onnx as scene models (``image`` (N, D, H, W) -> ``logits``, ADR 0001) and applied by
the CNN's inference path (:mod:`eoforge.inference.predict`) to a class COG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.config import InferSpec
from eoforge.embeddings.tiles import EmbeddingTile
from eoforge.errors import InputError
from eoforge.io.atomic import staged_file

__all__ = ["CLASSIFIERS", "NODATA_VECTOR", "EmbeddingScene", "apply_classifier",
           "export_classifier", "fit_classifier", "vectors_at"]  # fmt: skip

CLASSIFIERS = ("knn", "linear")
NODATA = 255


def vectors_at(
    tile: EmbeddingTile, rows: NDArray[np.integer[Any]], cols: NDArray[np.integer[Any]]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Vectors at pixels (rows, cols) and whether each has one (inside the tile, not no-data)."""
    return tile.vectors_at(rows, cols)


def fit_classifier(
    kind: str, x: NDArray[np.float32], y: NDArray[np.integer[Any]], seed: int = 0
) -> Any:
    """A fitted kNN (k = 5 or fewer if there are fewer points per class) or logistic probe."""
    if kind not in CLASSIFIERS:
        raise InputError(f"classifier '{kind}' is not one of {CLASSIFIERS}.")
    y = np.asarray(y, dtype=np.int64)  # skl2onnx needs int64 labels
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise InputError(f"labelled points cover {classes.size} class(es); give at least two.")
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        # unit vectors: euclidean neighbours are the cosine neighbours
        k = int(max(1, min(5, counts.min())))
        return KNeighborsClassifier(n_neighbors=k).fit(x, y)
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, y)


#: Value of every channel of a pixel without a vector, as the inference path reads it
#: (components of unit vectors lie in [-1, 1]; 0 is a valid component).
NODATA_VECTOR = -2.0
_EPS = 1e-6


def _scene_graph(pixel_model: Any, dims: int, n_classes: int, fitted: Sequence[int]) -> Any:
    """Wrap a per-pixel skl2onnx graph (``embedding`` (M, D) -> ``probabilities`` (M, k)) into
    eoforge's scene model contract (ADR 0001): ``image`` (N, D, H, W) -> ``logits``
    (N, K, H, W), K = every class (classes without points get probability 0), logits =
    log(probability), so the inference path's softmax gives the probabilities back."""
    from onnx import TensorProto, helper, numpy_helper

    g = pixel_model.graph
    onehot = np.zeros((len(fitted), n_classes), np.float32)
    onehot[np.arange(len(fitted)), np.asarray(fitted)] = 1.0
    consts = [
        numpy_helper.from_array(np.array([-1, dims], np.int64), "eoforge_flat_shape"),
        numpy_helper.from_array(onehot, "eoforge_onehot"),
        numpy_helper.from_array(np.array([_EPS], np.float32), "eoforge_eps"),
        numpy_helper.from_array(np.array([0, 2, 3], np.int64), "eoforge_nhw_idx"),
        numpy_helper.from_array(np.array([n_classes], np.int64), "eoforge_k"),
    ]
    before = [
        helper.make_node("Transpose", ["image"], ["eoforge_nhwd"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["eoforge_nhwd", "eoforge_flat_shape"], ["embedding"]),
    ]
    after = [
        helper.make_node("MatMul", ["probabilities", "eoforge_onehot"], ["eoforge_p"]),
        helper.make_node("Add", ["eoforge_p", "eoforge_eps"], ["eoforge_p_eps"]),
        helper.make_node("Log", ["eoforge_p_eps"], ["eoforge_logp"]),
        helper.make_node("Shape", ["image"], ["eoforge_shape"]),
        helper.make_node("Gather", ["eoforge_shape", "eoforge_nhw_idx"], ["eoforge_nhw"], axis=0),
        helper.make_node("Concat", ["eoforge_nhw", "eoforge_k"], ["eoforge_nhwk"], axis=0),
        helper.make_node("Reshape", ["eoforge_logp", "eoforge_nhwk"], ["eoforge_logits_nhwk"]),
        helper.make_node("Transpose", ["eoforge_logits_nhwk"], ["logits"], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        [*before, *g.node, *after],
        "eoforge_embedding_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", dims, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_classes, "H", "W"])],
        [*g.initializer, *consts],
    )
    model = helper.make_model(graph, opset_imports=list(pixel_model.opset_import),
                              producer_name="eoforge (skl2onnx inside)")  # fmt: skip
    model.ir_version = pixel_model.ir_version
    return model


def export_classifier(
    model: Any, dims: int, out: Path, sample: NDArray[np.float32], n_classes: int | None = None
) -> dict[str, Any]:
    """Write the classifier as a scene model (ONNX: skl2onnx's graph inside eoforge's ``image``
    -> ``logits`` contract, see :func:`_scene_graph`) and check its classes match
    scikit-learn's on ``sample`` (the vectors fed as a 1 x M scene).

    Raises:
        InputError: onnxruntime's classes differ from scikit-learn's on ``sample``.
    """
    import onnx
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    fitted = [int(c) for c in model.classes_]
    k = n_classes if n_classes is not None else max(fitted) + 1
    if max(fitted) >= k:
        raise InputError(f"labels hold class {max(fitted)} but only {k} classes are named.")
    onx = to_onnx(model, initial_types=[("embedding", FloatTensorType([None, dims]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)  # fmt: skip
    scene = _scene_graph(onx, dims, k, fitted)
    onnx.checker.check_model(scene)
    with staged_file(Path(out)) as tmp:
        tmp.write_bytes(scene.SerializeToString())
    agree = 1.0
    if len(sample):
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        image = np.ascontiguousarray(sample.astype(np.float32).T[None, :, None, :])
        logits = np.asarray(sess.run(["logits"], {"image": image})[0])
        agree = float(np.mean(logits[0, :, 0, :].argmax(axis=0) == model.predict(sample)))
    if agree < 0.99:
        Path(out).unlink(missing_ok=True)
        raise InputError(f"ONNX export of {type(model).__name__} agrees on {agree:.1%} of labels.")
    return {"onnx": str(out), "parity": agree, "classes": fitted, "n_classes": k}


class EmbeddingScene:
    """An embedding tile as the inference path reads a scene: ``(D, rows, W)`` float32 strips,
    :data:`NODATA_VECTOR` in every channel of a pixel without a vector."""

    def __init__(self, tile: EmbeddingTile) -> None:
        self.tile = tile

    @property
    def shape(self) -> tuple[int, int, int]:
        """(D, height, width)."""
        return self.tile.dims, self.tile.grid.height, self.tile.grid.width

    def read_rows(self, top: int, bottom: int) -> NDArray[np.float32]:
        """Rows ``[top, bottom)`` of every component."""
        vec, ok = self.tile.rows(slice(top, bottom))
        vec[~ok] = NODATA_VECTOR
        return np.ascontiguousarray(np.moveaxis(vec, -1, 0))


def apply_classifier(
    onnx_path: Path,
    tile: EmbeddingTile,
    out_tif: Path,
    spec: InferSpec | None = None,
    threads: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Classify every pixel of ``tile`` into a uint8 class COG (255 = no data) through the
    CNN's inference path (:func:`eoforge.inference.predict.predict_to_cog`: session checks,
    windows streamed strip by strip, COG writer); return its sha256 and the run's stats.

    The model is per pixel, so windows need no overlap (``spec`` default: 256 px windows, no
    overlap, 4 per batch); with overlap the blend averages identical probabilities.
    """
    from dataclasses import asdict

    from eoforge.inference.predict import predict_to_cog
    from eoforge.inference.session import open_session

    spec = spec or InferSpec.model_validate({"window": 256, "overlap": 0, "batch_size": 4})
    session = open_session(Path(onnx_path), threads, prefer_gpu=False)
    g = tile.grid
    sha, stats = predict_to_cog(session, EmbeddingScene(tile), spec, Path(out_tif), g.crs,
                                list(g.transform)[:6], NODATA_VECTOR)  # fmt: skip
    return sha, asdict(stats)
