"""Active learning, measured: how many labels does choosing them by uncertainty save?

    python -m benchmarks.active_learning --json OUT [--png docs/active_learning.png]

The oracle is the Sen2Cor SCL of tile 33TWL (the five classes of eoforge's default
``labels.scl_groups``), every date of the sample; the score is the mIoU on tile 33TWM (another
place, the same dates). Each pixel's features are its four bands and NDVI/NDWI. A run starts
from ``--start`` labels per class, then ``--rounds`` rounds of ``--batch`` labels; after each
round a random forest is retrained (seconds) and scored. Strategies:

- ``random``: labels drawn uniformly from the pool;
- ``uncertainty``: the ``batch`` pool pixels of highest entropy of the forest's probabilities;
- ``uncertainty+spread``: eoforge's own choice (:func:`eoforge.labelling.suggest.choose`, what
  ``eoforge suggest`` runs): entropy weighted down near points already chosen or labelled;
- ``uncertainty+clusters``: the ``10 * batch`` most uncertain pixels cut into ``batch``
  k-means clusters of their features, the most uncertain of each;
- ``uncertainty+random``: half the batch drawn at random, half the most uncertain (keeps the
  labelled set close to the pool's class mix, which pure uncertainty sampling skews).

``ratios.labels_to_match_random`` = labels the best strategy needs (mean curve over seeds) to
reach random's final mIoU, divided by random's final label count (< 1: labels saved).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "s2-l2a-sample"
MINI = ROOT / "src" / "eoforge" / "stac" / "sample" / "s2-l2a-mini"
BANDS = ("B02", "B03", "B04", "B08")
STRATEGIES = (
    "random",
    "uncertainty",
    "uncertainty+spread",
    "uncertainty+clusters",
    "uncertainty+random",
)


def _groups() -> tuple[list[str], dict[int, int]]:
    from eoforge.config import LabelSpec

    spec = LabelSpec()
    classes = list(spec.classes)
    lut = {code: classes.index(name) for name, codes in spec.scl_groups.items() for code in codes}
    return classes, lut


def tile_pixels(
    catalog: Path, tile: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Features, oracle class and (x, y) metres of every labelled pixel of ``tile``, all dates."""
    _, lut = _groups()
    feats, labels, coords = [], [], []
    for item in sorted(p for p in catalog.iterdir() if p.is_dir() and f"_{tile}_" in p.name):
        bands = []
        for b in BANDS:
            with rasterio.open(item / f"{b}.tif") as src:
                bands.append(src.read(1).astype(np.float32) / 1e4)
                transform = src.transform
        with rasterio.open(item / "SCL.tif") as src:
            scl = src.read(1)
        stack = np.stack(bands)
        cls = np.full(scl.shape, -1, np.int64)
        for code, k in lut.items():
            cls[scl == code] = k
        ok = (cls >= 0) & (stack > 0).all(axis=0)
        blue, green, red, nir = stack
        ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
        ndwi = (green - nir) / np.maximum(green + nir, 1e-6)
        rows, cols = np.nonzero(ok)
        xs, ys = rasterio.transform.xy(transform, rows, cols)
        feats.append(np.stack([blue, green, red, nir, ndvi, ndwi], axis=-1)[ok])
        labels.append(cls[ok])
        coords.append(np.stack([np.asarray(xs), np.asarray(ys)], axis=-1))
    if not feats:
        raise SystemExit(f"no items of tile {tile} in {catalog}")
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(coords)


def _entropy(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def _pick(
    strategy: str,
    model: Any,
    x: npt.NDArray[np.float32],
    xy: npt.NDArray[np.float64],
    labelled: npt.NDArray[np.bool_],
    batch: int,
    rng: np.random.Generator,
    spread_m: float,
) -> npt.NDArray[np.int64]:
    from sklearn.cluster import KMeans

    from eoforge.labelling.suggest import choose

    free = np.flatnonzero(~labelled)
    if strategy == "random":
        return rng.choice(free, batch, replace=False)
    ent = _entropy(model.predict_proba(x[free]))
    ent = ent + rng.uniform(0, 1e-9, len(ent))  # ties (many pixels at one entropy) broken at random
    if strategy == "uncertainty":
        return free[np.argsort(-ent)[:batch]]
    if strategy == "uncertainty+random":
        half = batch // 2
        drawn = rng.choice(len(free), half, replace=False)
        rest = np.setdiff1d(np.argsort(-ent), drawn, assume_unique=True)
        by_entropy = rest[np.argsort(-ent[rest], kind="stable")][: batch - half]
        return free[np.concatenate([drawn, by_entropy])]
    top = np.argsort(-ent)[: 10 * batch]
    if strategy == "uncertainty+spread":
        done = np.flatnonzero(labelled)
        picked = choose(
            xy[free[top], 0], xy[free[top], 1], ent[top], batch, spread_m, xy[done, 0], xy[done, 1]
        )
        return free[top[picked]]
    km = KMeans(batch, n_init=1, random_state=int(rng.integers(1 << 31))).fit(x[free[top]])
    out = []
    for c in range(batch):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            out.append(top[members[np.argmax(ent[top[members]])]])
    return free[np.array(out, np.int64)]


def run_strategy(
    strategy: str,
    seed: int,
    pool: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]],
    test: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    args: argparse.Namespace,
    n_classes: int,
    held_out: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
) -> dict[str, Any]:
    """One learning curve: labels and test mIoU after the start and after each round (and the
    mIoU on held-out pixels of the pool's own tile, ``miou_in_domain``, when given)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import jaccard_score

    x, y, xy = pool
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(y), bool)
    for k in range(n_classes):  # a few labels per class to start (what a human gives first)
        members = np.flatnonzero(y == k)
        labelled[rng.choice(members, min(args.start, len(members)), replace=False)] = True
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for r in range(args.rounds + 1):
        model = RandomForestClassifier(
            n_estimators=args.trees, n_jobs=args.jobs, random_state=seed
        ).fit(x[labelled], y[labelled])
        pred = model.predict(test[0])
        classes = list(range(n_classes))
        miou = jaccard_score(test[1], pred, labels=classes, average="macro")
        point: dict[str, Any] = {"labels": int(labelled.sum()), "miou": round(float(miou), 4)}
        if held_out is not None:
            own = jaccard_score(
                held_out[1], model.predict(held_out[0]), labels=classes, average="macro"
            )
            point["miou_in_domain"] = round(float(own), 4)
        if r == args.rounds:
            per_class = jaccard_score(test[1], pred, labels=classes, average=None)
            point["per_class_iou"] = [round(float(v), 4) for v in per_class]
        curve.append(point)
        if r < args.rounds:
            picked = _pick(strategy, model, x, xy, labelled, args.batch, rng, args.spread)
            labelled[picked] = True
    return {"seed": seed, "curve": curve, "seconds": round(time.perf_counter() - t0, 2)}


def labels_to_reach(curve: list[dict[str, float]], target: float) -> int | None:
    """Fewest labels at which ``curve`` reaches ``target`` (None: never)."""
    for point in curve:
        if point["miou"] >= target - 1e-9:
            return int(point["labels"])
    return None


def _mean_curve(runs: list[dict[str, Any]], key: str = "miou") -> list[dict[str, float]]:
    return [
        {
            "labels": runs[0]["curve"][i]["labels"],
            "miou": round(float(np.mean([r["curve"][i][key] for r in runs])), 4),
            "min": float(np.min([r["curve"][i][key] for r in runs])),
            "max": float(np.max([r["curve"][i][key] for r in runs])),
        }
        for i in range(len(runs[0]["curve"]))
        if key in runs[0]["curve"][i]
    ]


def plot(result: dict[str, Any], out_png: Path) -> Path:
    """The learning curves (mean over seeds, min..max shaded) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    panels = (
        ("mean_curve", "mIoU on 33TWM (5 classes): the score", result["random_final_miou"]),
        (
            "mean_curve_in_domain",
            "mIoU on held-out pixels of 33TWL (where labels come from)",
            result.get("random_final_miou_in_domain"),
        ),
    )
    for ax, (key, ylabel, target) in zip(axes, panels, strict=True):
        colours = ("#777777", "#d62728", "#1f77b4", "#2ca02c", "#9467bd")
        for name, colour in zip(STRATEGIES, colours, strict=True):
            if name not in result["strategies"]:
                continue
            mean = result["strategies"][name].get(key) or []
            labels = [p["labels"] for p in mean]
            ax.plot(labels, [p["miou"] for p in mean], "-o", ms=2, color=colour, label=name)
            lo, hi = [p["min"] for p in mean], [p["max"] for p in mean]
            ax.fill_between(labels, lo, hi, color=colour, alpha=0.10)
        if target is not None:
            ax.axhline(target, color="#777777", ls=":", lw=1)
        ax.set_xlabel("labels (pixels of 33TWL, SCL as the oracle)")
        ax.set_title(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[0].legend(loc="lower right", fontsize=8)
    ratio = result["ratios"]["labels_to_match_random"]
    best = result["ratios"]["best_strategy"]
    reach = f"with {ratio:.2f} x the labels" if ratio is not None else "never"
    fig.suptitle(
        f"Active learning: {best or 'no strategy'} reaches random's final 33TWM mIoU {reach}",
        fontsize=11,
    )
    fig.text(
        0.01, 0.01,
        f"{len(result['seeds'])} seeds (mean, min..max shaded), random forest of "
        f"{result['params']['trees']} trees retrained per round; load {result['machine']['load_avg']}",
        fontsize=7, color="#555555",
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out_png


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every strategy and seed; the dict written by ``--json``."""
    classes, _ = _groups()
    catalog = args.catalog
    t0 = time.perf_counter()
    px, py, pxy = tile_pixels(catalog, "33TWL")
    tx, ty, _ = tile_pixels(catalog, "33TWM")
    rng = np.random.default_rng(12345)
    order = rng.permutation(len(py))
    pool_idx = order[: args.pool]
    own_idx = order[args.pool : args.pool + args.in_domain_pixels]  # never in the pool
    test_idx = rng.choice(len(ty), min(args.test_pixels, len(ty)), replace=False)
    pool = (px[pool_idx], py[pool_idx], pxy[pool_idx])
    test = (tx[test_idx], ty[test_idx])
    held_out = (px[own_idx], py[own_idx]) if len(own_idx) else None
    load_before = os.getloadavg()
    strategies: dict[str, Any] = {}
    for name in args.strategies:
        runs = [run_strategy(name, s, pool, test, args, len(classes), held_out) for s in args.seeds]
        strategies[name] = {
            "runs": runs,
            "mean_curve": _mean_curve(runs),
            "mean_curve_in_domain": _mean_curve(runs, "miou_in_domain"),
            "final_per_class_iou_mean": dict(
                zip(
                    classes,
                    np.mean([r["curve"][-1]["per_class_iou"] for r in runs], axis=0).round(4),
                    strict=True,
                )
            ),
        }
        print(f"{name:22s} final mIoU {strategies[name]['mean_curve'][-1]['miou']:.3f}", flush=True)
    random_final = strategies["random"]["mean_curve"][-1]
    reach = {
        n: labels_to_reach(s["mean_curve"], random_final["miou"])
        for n, s in strategies.items()
        if n != "random"
    }
    per_seed = {
        n: [
            labels_to_reach(r["curve"], rr["curve"][-1]["miou"])
            for r, rr in zip(s["runs"], strategies["random"]["runs"], strict=True)
        ]
        for n, s in strategies.items()
        if n != "random"
    }
    reached = {n: v for n, v in reach.items() if v is not None}
    own_final = strategies["random"]["mean_curve_in_domain"]
    reach_own = {
        n: labels_to_reach(s["mean_curve_in_domain"], own_final[-1]["miou"]) if own_final else None
        for n, s in strategies.items()
        if n != "random"
    }
    best = min(reached, key=lambda n: reached[n]) if reached else None
    load = os.getloadavg()
    return {
        "benchmark": "active_learning",
        "catalog": str(catalog),
        "oracle": "SCL of 33TWL (eoforge's default scl_groups), all dates",
        "scored_on": "33TWM, all dates",
        "classes": classes,
        "pool_pixels": len(pool_idx),
        "test_pixels": len(test_idx),
        "in_domain_pixels": len(own_idx),
        "class_share_pool": {
            c: round(float((pool[1] == k).mean()), 4) for k, c in enumerate(classes)
        },
        "params": {
            "start_per_class": args.start,
            "rounds": args.rounds,
            "batch": args.batch,
            "trees": args.trees,
            "spread_m": args.spread,
        },
        "seeds": list(args.seeds),
        "strategies": strategies,
        "random_final_miou": random_final["miou"],
        "random_final_labels": random_final["labels"],
        "labels_to_reach_random_final": reach,
        "labels_to_reach_random_final_per_seed": per_seed,
        "ratios": {
            "best_strategy": best,
            "labels_to_match_random": (
                round(reached[best] / random_final["labels"], 3) if best is not None else None
            ),
            "per_strategy": {
                n: (round(v / random_final["labels"], 3) if v is not None else None)
                for n, v in reach.items()
            },
            # the same on held-out pixels of 33TWL (no change of place): what labels buy where
            # they were taken, apart from how the forest transfers to 33TWM
            "in_domain_per_strategy": {
                n: (round(v / random_final["labels"], 3) if v is not None else None)
                for n, v in reach_own.items()
            },
        },
        "random_final_miou_in_domain": own_final[-1]["miou"] if own_final else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": round(load[0], 2),
            "load_avg_at_start": [round(v, 2) for v in load_before],
            "load_avg_at_end": [round(v, 2) for v in load],
        },
    }


def main(argv: list[str] | None = None) -> int:
    # scikit-learn's own forest warns once per fit about its joblib use; nothing to act on here
    warnings.filterwarnings("ignore", message=r".*sklearn\.utils\.parallel\.delayed.*")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--png", type=Path, help="write the learning curves here")
    parser.add_argument(
        "--catalog", type=Path, default=SAMPLE if SAMPLE.is_dir() else MINI,
        help="static catalog with 33TWL and 33TWM items (default ../shared/data/s2-l2a-sample)",
    )  # fmt: skip
    parser.add_argument("--start", type=int, default=3, help="labels per class to start with")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=10, help="labels per round")
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--spread", type=float, default=2000.0, help="metres (spread strategy)")
    parser.add_argument("--pool", type=int, default=20000, help="candidate pixels of 33TWL")
    parser.add_argument("--test-pixels", type=int, default=100000, help="scored pixels of 33TWM")
    parser.add_argument(
        "--in-domain-pixels", type=int, default=50000,
        help="held-out pixels of 33TWL also scored (0: off)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES,
        help="strategies to run (random is always run: the others are compared with it)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.strategies = ["random", *(s for s in args.strategies if s != "random")]
    result = run(args)
    ratio = result["ratios"]["labels_to_match_random"]
    print(
        f"random final mIoU {result['random_final_miou']:.3f} at {result['random_final_labels']} "
        f"labels; best {result['ratios']['best_strategy']}: ratio {ratio}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.png:
        plot(result, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
