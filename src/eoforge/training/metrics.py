"""Segmentation metrics: a confusion matrix over labelled pixels and the scores derived from it.

Pixels are excluded where the label is ``ignore_index`` (unlabelled) or where the prediction is
``ignore_index``. A prediction is 255 only where the *input* was nodata (see
:func:`eoforge.inference.predict.predict_scene`): there was nothing to judge the model on, so such pixels
count neither as right nor as wrong. That set is the same for every model run on the same
scenes (if each masks input nodata the same way), so model-vs-baseline comparisons stay fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.errors import InputError

__all__ = ["confusion_matrix", "metrics_from_confusion"]

_CHUNK = 1 << 22  # pixels per pass: bounds the int64 temporaries at ~100 MB for any scene size


def confusion_matrix(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    num_classes: int,
    ignore_index: int = 255,
) -> npt.NDArray[np.int64]:
    """Count (true class, predicted class) pairs over the labelled, predicted pixels.

    Args:
        y_true: label class indices, any shape; ``ignore_index`` = unlabelled.
        y_pred: predicted class indices, same shape; ``ignore_index`` = no prediction (nodata).
        num_classes: K; valid classes are ``0..K-1``.
        ignore_index: value excluded in either array.

    Returns:
        (K, K) int64; rows are true classes, columns predicted classes.

    Raises:
        InputError: shapes differ, ``num_classes`` < 1, or a value is outside ``0..K-1``
            and not ``ignore_index``.
    """
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.shape != pred.shape:
        raise InputError(
            f"labels {true.shape} and predictions {pred.shape} differ in shape; evaluate a "
            "prediction on the grid of its labels."
        )
    for name, a in (("labels", true), ("predictions", pred)):
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name} must be integer class indices, got dtype {a.dtype}.")
    if num_classes < 1:
        raise InputError(f"num_classes={num_classes} must be >= 1.")
    k = int(num_classes)
    true, pred = true.ravel(), pred.ravel()
    cm = np.zeros(k * k, np.int64)
    for start in range(0, true.size, _CHUNK):
        t = true[start : start + _CHUNK]
        p = pred[start : start + _CHUNK]
        keep = (t != ignore_index) & (p != ignore_index)
        t = t[keep].astype(np.int64)
        p = p[keep].astype(np.int64)
        for name, values in (("labels", t), ("predictions", p)):
            if values.size and (values.min() < 0 or values.max() >= k):
                bad = np.unique(values[(values < 0) | (values >= k)])[:10].tolist()
                raise InputError(
                    f"{name} hold values {bad} outside 0..{k - 1} (and not ignore_index="
                    f"{ignore_index}); check the class grouping and num_classes."
                )
        cm += np.bincount(t * k + p, minlength=k * k)
    return cm.reshape(k, k)


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den > 0 else None


def metrics_from_confusion(
    cm: npt.NDArray[np.integer[Any]], class_names: Sequence[str]
) -> dict[str, Any]:
    """Scores of a confusion matrix (rows true, columns predicted).

    Conventions: a class without support (no true and no predicted pixel) has IoU ``None`` and
    is left out of the mean; precision (recall) is ``None`` when nothing was predicted as (is
    labelled as) the class; F1 is ``2TP / (2TP + FP + FN)``, i.e. 0 when either is zero and
    ``None`` only without support.

    Args:
        cm: (K, K) counts from :func:`confusion_matrix`.
        class_names: K names, index = class value.

    Returns:
        JSON-ready dict: ``miou``, ``pixel_accuracy`` (float or None), ``per_class_iou``,
        ``per_class_precision``, ``per_class_recall``, ``per_class_f1`` ({name: float or None}),
        ``support`` ({name: labelled pixels}), ``num_pixels``, ``classes`` and
        ``confusion_matrix`` (nested lists).

    Raises:
        InputError: ``cm`` is not square, negative, or does not match ``class_names``.
    """
    m = np.asarray(cm)
    names = list(class_names)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(names):
        raise InputError(
            f"confusion matrix of shape {m.shape} does not match {len(names)} class names {names}."
        )
    if (m < 0).any():
        raise InputError("confusion matrix holds negative counts; build it with confusion_matrix.")
    m = m.astype(np.int64)
    tp = np.diag(m)
    labelled = m.sum(axis=1)
    predicted = m.sum(axis=0)
    fp, fn = predicted - tp, labelled - tp
    iou = {n: _ratio(int(tp[i]), int(tp[i] + fp[i] + fn[i])) for i, n in enumerate(names)}
    scored = [v for v in iou.values() if v is not None]
    return {
        "classes": names,
        "miou": float(np.mean(scored)) if scored else None,
        "pixel_accuracy": _ratio(int(tp.sum()), int(m.sum())),
        "per_class_iou": iou,
        "per_class_precision": {
            n: _ratio(int(tp[i]), int(predicted[i])) for i, n in enumerate(names)
        },
        "per_class_recall": {n: _ratio(int(tp[i]), int(labelled[i])) for i, n in enumerate(names)},
        "per_class_f1": {
            n: _ratio(2 * int(tp[i]), int(2 * tp[i] + fp[i] + fn[i])) for i, n in enumerate(names)
        },
        "support": {n: int(labelled[i]) for i, n in enumerate(names)},
        "num_pixels": int(m.sum()),
        "confusion_matrix": m.tolist(),
    }
