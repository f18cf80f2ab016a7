"""Honest scores for embedding products against a static land-cover reference from the cube.

The reference (documented in ADR 0013): per pixel, the most frequent clear-sky SCL class among
vegetation (4), not vegetated = bare (5) and water (6) over the dates (ties: the lower code);
pixels never seen as one of them are not scored. Few-shot scores draw ``n`` points per class
from one tile's reference and score every scored pixel of another tile.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.cube.tiles import CubeTile
from eoforge.embeddings.classify import fit_classifier
from eoforge.embeddings.features import BANDS, clear_median, iter_blocks
from eoforge.embeddings.tiles import EmbeddingTile

__all__ = ["CLASSES", "IGNORE", "TileTruth", "draw_points", "fewshot_curves", "miou", "reference",
           "tile_truth"]  # fmt: skip

CLASSES = ("vegetation", "bare", "water")
IGNORE = 255
SHOTS = (5, 10, 25, 50)
SEEDS = (0, 1, 2, 3, 4)


def reference(scl: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(time, h, w) SCL -> (h, w) majority of vegetation / bare / water (255 if never seen)."""
    counts = np.stack([(scl == code).sum(axis=0) for code in (4, 5, 6)])
    ref: NDArray[np.uint8] = counts.argmax(axis=0).astype(np.uint8)
    ref[counts.max(axis=0) == 0] = IGNORE
    return ref


def miou(pred: NDArray[Any], truth: NDArray[Any], n: int = len(CLASSES)) -> float:
    """Mean intersection over union of the classes present in ``pred`` or ``truth``."""
    ious = []
    for c in range(n):
        union = np.sum((pred == c) | (truth == c))
        if union:
            ious.append(np.sum((pred == c) & (truth == c)) / union)
    return float(np.mean(ious)) if ious else float("nan")


class TileTruth:
    """A whole tile's reference, vectors and median bands, for scoring (not for production)."""

    def __init__(self, cube_tile: CubeTile, field_tile: EmbeddingTile) -> None:
        refs, meds = [], []
        for block in iter_blocks(cube_tile, 256):
            refs.append(reference(block.scl))
            meds.append(clear_median(block))
        self.ref = np.concatenate(refs)
        self.med = np.concatenate(meds)
        self.vec, self.ok = field_tile.rows(slice(0, field_tile.grid.height))
        self.scored = (self.ref != IGNORE) & self.ok & np.isfinite(self.med).all(axis=-1)


def tile_truth(cube_tile: CubeTile, field_tile: EmbeddingTile) -> TileTruth:
    """The :class:`TileTruth` of one tile."""
    return TileTruth(cube_tile, field_tile)


def draw_points(truth: TileTruth, n: int, seed: int) -> NDArray[np.int64]:
    """Flat pixel indices of up to ``n`` random scored pixels per reference class."""
    rng = np.random.default_rng(seed)
    flat_ref, flat_ok = truth.ref.ravel(), truth.scored.ravel()
    picks = []
    for c in range(len(CLASSES)):
        pool = np.flatnonzero((flat_ref == c) & flat_ok)
        picks.append(rng.choice(pool, size=min(n, pool.size), replace=False))
    return np.concatenate(picks)


def fewshot_curves(
    train: TileTruth,
    test: TileTruth,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = SEEDS,
    trees: int = 100,
) -> dict[str, dict[str, Any]]:
    """mIoU on ``test`` of kNN / linear probe on embeddings and a random forest on median bands,
    fitted on the same ``n`` points per class of ``train``; mean, std and runs per ``n``."""
    from sklearn.ensemble import RandomForestClassifier

    d = train.vec.shape[-1]
    xe_tr, xb_tr = train.vec.reshape(-1, d), train.med.reshape(-1, len(BANDS))
    mask = test.scored.ravel()
    xe_te, xb_te = test.vec.reshape(-1, d)[mask], test.med.reshape(-1, len(BANDS))[mask]
    y_te = test.ref.ravel()[mask]
    out: dict[str, dict[str, Any]] = {}
    for n in shots:
        runs: dict[str, list[float]] = {"embeddings_knn": [], "embeddings_linear": [],
                                        "rf_bands": []}  # fmt: skip
        for seed in seeds:
            idx = draw_points(train, n, seed)
            y = train.ref.ravel()[idx].astype(np.int64)
            for kind in ("knn", "linear"):
                clf = fit_classifier(kind, xe_tr[idx], y, seed)
                runs[f"embeddings_{kind}"].append(miou(clf.predict(xe_te), y_te))
            rf = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
            runs["rf_bands"].append(miou(rf.fit(xb_tr[idx], y).predict(xb_te), y_te))
        row: dict[str, Any] = {}
        for key, vals in runs.items():
            row[f"{key}_miou"] = statistics.mean(vals)
            row[f"{key}_miou_std"] = statistics.pstdev(vals)
            row[f"{key}_miou_runs"] = vals
        out[str(n)] = row
    return out


def cluster_ami(labels: NDArray[Any], truth: TileTruth) -> float:
    """Adjusted mutual information of a cluster map with the reference on scored pixels."""
    from sklearn.metrics import adjusted_mutual_info_score

    return float(adjusted_mutual_info_score(truth.ref[truth.scored], labels[truth.scored]))
