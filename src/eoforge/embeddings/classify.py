"""Few-label classifiers on an embedding field: kNN and a linear probe (scikit-learn), exported
through skl2onnx and applied block by block with onnxruntime to a class COG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.embeddings.rasters import RowCog
from eoforge.embeddings.tiles import EmbeddingTile
from eoforge.errors import InputError
from eoforge.io.atomic import staged_file

__all__ = ["CLASSIFIERS", "apply_classifier", "export_classifier", "fit_classifier",
           "vectors_at"]  # fmt: skip

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


def export_classifier(
    model: Any, dims: int, out: Path, sample: NDArray[np.float32]
) -> dict[str, Any]:
    """Write the classifier as ONNX (skl2onnx) and check its labels match scikit-learn's.

    Raises:
        InputError: onnxruntime's labels differ from scikit-learn's on ``sample``.
    """
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(model, initial_types=[("embedding", FloatTensorType([None, dims]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)  # fmt: skip
    with staged_file(Path(out)) as tmp:
        tmp.write_bytes(onx.SerializeToString())
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"embedding": sample.astype(np.float32)})[0]
    want = model.predict(sample)
    agree = float(np.mean(np.asarray(got) == want)) if len(sample) else 1.0
    if agree < 0.99:
        Path(out).unlink(missing_ok=True)
        raise InputError(f"ONNX export of {type(model).__name__} agrees on {agree:.1%} of labels.")
    return {"onnx": str(out), "parity": agree, "classes": [int(c) for c in model.classes_]}


def apply_classifier(
    onnx_path: Path,
    tile: EmbeddingTile,
    out_tif: Path,
    class_values: Sequence[int],
    rows: int = 256,
) -> str:
    """Classify every pixel of ``tile`` into a uint8 class COG (255 = no data); return sha256."""
    import onnxruntime as ort

    from eoforge.inference.safety import check_onnx_external_data
    from eoforge.inference.session import session_options

    check_onnx_external_data(onnx_path)
    sess = ort.InferenceSession(str(onnx_path), sess_options=session_options(None),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    lut = np.asarray(class_values, dtype=np.uint8)
    with RowCog(out_tif, tile.grid, dtype="uint8", nodata=NODATA, resampling="MODE") as cog:
        for sl, vec, ok in tile.blocks(rows):
            h, w, d = vec.shape
            out = np.full(h * w, NODATA, np.uint8)
            flat = vec.reshape(-1, d)[ok.ravel()]
            if flat.size:
                probs = np.asarray(sess.run(["probabilities"], {"embedding": flat})[0])
                out[ok.ravel()] = lut[probs.argmax(axis=1)]
            cog.write(sl, out.reshape(h, w))
    assert cog.sha256 is not None
    return cog.sha256
