"""Drift detection benchmark: true- and false-positive rates on real scenes and shifted variants.

    python -m benchmarks.drift --json OUT

The real scenes are the bundled sample's items (``eoforge/stac/sample``): five dates of each of
its two tiles, each tile taking the training tile's part in turn. For each date of a tile the
reference profile is built from the *other* dates of that tile (leave one date out, so no scene
is scored against a reference that contains it) and the held-out date is scored
(:func:`eoforge.inference.drift.drift_scores`): that is the in-distribution set (10 scenes), its
drift rate the false-positive rate. The shifted set is made from the same held-out dates: haze (an additive
path radiance, strongest in blue), brightness x1.3, the other processing baseline's units (DN
without the +1000 offset of baseline >= 04.00), red and NIR swapped, a mostly-cloud scene (85 %
of the pixels replaced by bright flat cloud), a snow scene (60 % snow), and the other tile's
scenes scored against the tile's full reference (both ways). No threshold is fitted here: the
scores use the constants of :mod:`eoforge.inference.drift` and the reference's own
leave-one-date-out threshold. ``false_positive_rate_clear`` repeats the false-positive rate over
the real scenes at most ``SPREAD_MAX_OBSCURED`` obscured, to show what the mostly cloudy dates add. Predicted class fractions are
stood in for by the scene's own Sen2Cor classes grouped like the labels (``LabelSpec``), what a
perfect model would predict, so the benchmark needs no trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from eoforge.config import BUNDLED_CATALOG, ChipSpec, LabelSpec, StacSpec
from eoforge.inference.drift import (
    SPREAD_MAX_OBSCURED,
    ProfileAccumulator,
    drift_scores,
    reference_profile,
)
from eoforge.labels.classes import scl_to_classes

BAND_FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def read_item(folder: Path, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(bands (C, H, W) uint16 DN, Sen2Cor SCL (H, W)) of one sample item."""
    arrays = []
    for name in bands:
        with rasterio.open(folder / f"{BAND_FILES[name]}.tif") as src:
            arrays.append(src.read(1))
    with rasterio.open(folder / "SCL.tif") as src:
        scl = src.read(1)
    return np.stack(arrays), scl


def _haze(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    add = np.array([900, 650, 450, 200], np.float64)[: x.shape[0], None, None]
    return _keep_nodata(x, x + add)


def _bright(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _keep_nodata(x, x * 1.3)


def _old_baseline(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _keep_nodata(x, np.maximum(x.astype(np.float64) - 1000, 1))


def _swap(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = x.copy()
    y[[2, 3]] = x[[3, 2]]
    return y


def _cover(
    x: np.ndarray, rng: np.random.Generator, share: float, level: list[int]
) -> tuple[np.ndarray, int]:
    """Replace ``share`` of the scene (a band of rows from the top) by a flat bright surface."""
    y = x.astype(np.float64)
    rows = round(share * x.shape[1])
    noise = rng.normal(0, 250, (x.shape[0], rows, x.shape[2]))
    y[:, :rows] = np.array(level, np.float64)[: x.shape[0], None, None] + noise
    return _keep_nodata(x, y), rows


def _cloud(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _cover(x, rng, 0.85, [8200, 8000, 8100, 8600])[0]


def _snow(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _cover(x, rng, 0.6, [9600, 9400, 9200, 8200])[0]


def _keep_nodata(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.clip(np.rint(y), 1, 65535).astype(np.uint16)
    out[x == 0] = 0
    return out


SHIFTS: dict[str, Shift] = {
    "haze": _haze,
    "brightness_x1.3": _bright,
    "old_baseline_units": _old_baseline,
    "red_nir_swap": _swap,
    "mostly_cloud": _cloud,
    "snow": _snow,
}


#: What a model predicts on the covered rows of a shifted scene (None: the scene's own classes).
COVER_CLASS = {"mostly_cloud": ("cloud", 0.85), "snow": ("bare", 0.6)}


def _accumulate(
    x: np.ndarray, scl: np.ndarray, bands: tuple[str, ...], labels: LabelSpec, shift: str = "none"
) -> ProfileAccumulator:
    acc = ProfileAccumulator(bands, labels.classes)
    classes = scl_to_classes(scl, labels)
    if shift in COVER_CLASS:  # a model has no snow class: it calls snow bare ground
        name, share = COVER_CLASS[shift]
        classes[: round(share * x.shape[1])] = labels.classes.index(name)
    acc.add(x, classes)
    return acc


def _profile(
    x: np.ndarray, scl: np.ndarray, bands: tuple[str, ...], labels: LabelSpec, shift: str = "none"
) -> dict[str, Any]:
    return _accumulate(x, scl, bands, labels, shift).profile()


def _reference(
    scenes: list[tuple[np.ndarray, np.ndarray]], bands: tuple[str, ...], labels: LabelSpec
) -> dict[str, Any]:
    return reference_profile([_accumulate(x, scl, bands, labels) for x, scl in scenes])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score every in-distribution and shifted scene; return the result dict."""
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    bands, labels, chips = StacSpec().bands, LabelSpec(), ChipSpec()
    items = sorted(p for p in BUNDLED_CATALOG.iterdir() if p.is_dir())
    tiles = [*chips.train_tiles, *chips.test_tiles]
    by_tile = {t: [p for p in items if t in p.name] for t in tiles}
    data = {p.name: read_item(p, bands) for p in items if any(t in p.name for t in tiles)}
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for tile, own in by_tile.items():
        for held in own:
            reference = _reference([data[p.name] for p in own if p != held], bands, labels)
            x, scl = data[held.name]
            rows.append(
                _row(held.name, "none", False, _profile(x, scl, bands, labels), reference, tile)
            )
            for name, shift in SHIFTS.items():
                profile = _profile(shift(x, rng), scl, bands, labels, name)
                rows.append(_row(held.name, name, True, profile, reference, tile))
    for tile, own in by_tile.items():
        full = _reference([data[p.name] for p in own], bands, labels)
        for other in (t for t in tiles if t != tile):
            for p in by_tile[other]:
                profile = _profile(*data[p.name], bands, labels)
                rows.append(_row(p.name, "other_tile", True, profile, full, tile))
    positives = [r for r in rows if r["shifted"]]
    negatives = [r for r in rows if not r["shifted"]]
    clear = [r for r in negatives if r["obscured_fraction"] <= SPREAD_MAX_OBSCURED]
    by_shift = {
        name: float(np.mean([r["drifted"] for r in positives if r["shift"] == name]))
        for name in [*SHIFTS, "other_tile"]
    }
    return {
        "benchmark": "drift",
        "detection": {
            "true_positive_rate": float(np.mean([r["drifted"] for r in positives])),
            "false_positive_rate": float(np.mean([r["drifted"] for r in negatives])),
            "false_positive_rate_clear": float(np.mean([r["drifted"] for r in clear])),
            "negatives_clear": len(clear),
            "false_positives": [
                {
                    "item": r["item"],
                    "obscured_fraction": r["obscured_fraction"],
                    "reasons": r["reasons"],
                }
                for r in negatives
                if r["drifted"]
            ],
            "true_positive_rate_by_shift": by_shift,
            "positives": len(positives),
            "negatives": len(negatives),
        },
        "scenes": rows,
        "config": {
            "tiles": {t: [p.name for p in own] for t, own in by_tile.items()},
            "reference": "leave one date out of the scene's tile (each tile in turn); the other "
            "tile's five dates for other_tile",
            "class_fractions": "Sen2Cor SCL grouped by LabelSpec (a perfect model's prediction)",
        },
        "seconds": time.perf_counter() - t0,
        "machine": {
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
            "cpus": os.cpu_count(),
        },
    }


def _row(
    item: str,
    shift: str,
    shifted: bool,
    profile: dict[str, Any],
    reference: dict[str, Any],
    reference_tile: str,
) -> dict[str, Any]:
    scores = drift_scores(profile, reference)
    return {
        "item": item,
        "reference_tile": reference_tile,
        "shift_threshold": scores["thresholds"]["band_shift"],
        "shift": shift,
        "shifted": shifted,
        "drifted": scores["drifted"],
        "max_band_shift": scores["max_band_shift"],
        "max_band_psi": scores["max_band_psi"],
        "max_band_wasserstein_iqr": scores["max_band_wasserstein_iqr"],
        "class_psi": scores["class_psi"],
        "obscured_fraction": scores["obscured_fraction"],
        "reasons": scores["reasons"],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m benchmarks.drift``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(args)
    det = result["detection"]
    for r in result["scenes"]:
        print(
            f"  {r['item']:26s} {r['shift']:20s} drifted={r['drifted']!s:5s} "
            f"shift={r['max_band_shift']:.2f} "
            f"psi={r['max_band_psi']:.3f} w={r['max_band_wasserstein_iqr']:.3f} "
            f"class_psi={r['class_psi']:.3f} obscured={r['obscured_fraction']:.2f}"
        )
    print(
        f"true-positive rate {det['true_positive_rate']:.3f} ({det['positives']} shifted), "
        f"false-positive rate {det['false_positive_rate']:.3f} ({det['negatives']} real; "
        f"{det['false_positive_rate_clear']:.3f} of the {det['negatives_clear']} at most "
        f"{SPREAD_MAX_OBSCURED:.0%} obscured)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
