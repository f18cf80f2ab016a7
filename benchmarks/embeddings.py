"""Embeddings benchmark: few-label classification, KMeans and throughput on the real sample.

    python -m benchmarks.embeddings [--json OUT] [--catalog ../shared/data/s2-l2a-sample]

On the full real sample (2 tiles x 5 dates, 915 x 915 px at 120 m) loaded into a Zarr cube
with :func:`eoforge.cube.build.write_cube` (not timed):

- **Reference land cover** (static, derived from the cube): per pixel, the most frequent
  clear-sky SCL class among vegetation (4) / not vegetated = bare (5) / water (6) over the five
  dates (ties: the lower code); pixels never seen as one of them are not scored.
- **Encoder**: :mod:`eoforge.embeddings.encoder` trained without labels on pixels of 33TWL
  only (the training tile), then the 64-d field of both tiles written to Zarr int8 + scale.
- **Few-shot**: for 5, 10, 25, 50 labelled points per class drawn from 33TWL's reference,
  5 seeds: kNN and a logistic-regression probe on the field vs a random forest (100 trees) on
  the per-pixel temporal median of the clear bands, at the same points. mIoU over the three
  classes on every scored pixel of 33TWM. Means and standard deviations over seeds.
- **KMeans** (k = 8, MiniBatchKMeans): adjusted mutual information of the 33TWM cluster map
  with the reference, on embeddings vs on standardised median bands.
- **Choosing the masking rate** (``--select-keep 0.6 1.0``): on 33TWL alone, an encoder per
  candidate trained on the west 75 % of its columns, 10 points per class drawn there, scored on
  the east 25 %; the best candidate is then trained on all of 33TWL and scored on 33TWM.
- **Throughput**: embedding (read cube -> encode -> int8 Zarr) and classification (ONNX kNN /
  probe as scene models through the inference path over the field -> COG) in Mpx/s on one whole
  tile; peak RSS of the process.

The numbers are as measured; nothing is tuned to the issue's target.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.chips import DEFAULT_CATALOG, load_cube
from eoforge.embeddings.evaluate import (
    CLASSES,
    SEEDS,
    SHOTS,
    TileTruth,
    draw_points,
    fewshot_curves,
)

TRAIN_TILE, TEST_TILE = "33TWL", "33TWM"
K = 8


def kmeans_ami(field: Path, test: TileTruth) -> dict[str, float]:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_mutual_info_score

    from eoforge.embeddings.field import open_field_tile
    from eoforge.embeddings.unsupervised import fit_kmeans

    mask = test.scored
    km = fit_kmeans([open_field_tile(field, TEST_TILE)], K, seed=0)
    emb_labels = km.predict(test.vec[mask])
    med = test.med[mask]
    z = (med - med.mean(axis=0)) / (med.std(axis=0) + 1e-9)
    kb = MiniBatchKMeans(n_clusters=K, random_state=0, batch_size=4096, n_init=3).fit(z)
    truth = test.ref[mask]
    return {
        "k": K,
        "ami_embeddings": float(adjusted_mutual_info_score(truth, emb_labels)),
        "ami_bands": float(adjusted_mutual_info_score(truth, kb.labels_)),
    }


def _columns(truth: TileTruth, cols: slice) -> TileTruth:
    """The part of a tile's truth in columns ``cols`` (a validation block of the same tile)."""
    part = copy.copy(truth)
    for name in ("ref", "med", "vec", "ok", "scored"):
        setattr(part, name, getattr(truth, name)[:, cols])
    return part


def select_keep(
    tile: Any, candidates: Sequence[float], work: Path, epochs: int, pixels: int,
    seeds: Sequence[int], shots: int = 10, east: float = 0.25,
) -> dict[str, Any]:  # fmt: skip
    """Choose the masking rate on the training tile alone: for each candidate, an encoder trained
    (no labels) on the west ``1 - east`` of 33TWL's columns, ``shots`` points per class drawn
    there, kNN and linear probe scored on the east block (the validation block of ``eoforge
    run``). The best of the two at ``shots`` points picks ``keep``; 33TWM is never read."""
    from eoforge.embeddings.encoder import EncoderConfig, sample_pixels, train_encoder
    from eoforge.embeddings.field import open_field_tile, write_field

    cut = int(tile.grid.width * (1 - east))
    scores: dict[str, Any] = {}
    for keep in candidates:
        refl, clear, doy = sample_pixels([tile], pixels, 0, columns=slice(0, cut))
        config = EncoderConfig(dates=refl.shape[1], epochs=epochs, keep=keep)
        model = train_encoder(refl, clear, doy, config)
        field = work / f"select-{keep}.zarr"
        write_field([tile], model, field, encoder_sha256=f"select-{keep}")
        truth = TileTruth(tile, open_field_tile(field, tile.grid.tile))
        row = fewshot_curves(
            _columns(truth, slice(0, cut)), _columns(truth, slice(cut, None)), [shots], seeds, 50
        )[str(shots)]
        best = max(row["embeddings_knn_miou"], row["embeddings_linear_miou"])
        scores[str(keep)] = {"best_embedding_miou": best, **{k: v for k, v in row.items()
                                                            if not k.endswith("_runs")}}  # fmt: skip
        print(f"  select keep={keep}: best embedding mIoU {best:.3f} on the east block of 33TWL")
    chosen = max(candidates, key=lambda k: scores[str(k)]["best_embedding_miou"])
    return {"chosen_keep": chosen, "shots": shots, "validation": f"33TWL columns >= {cut}",
            "scores": scores}  # fmt: skip


def run(
    catalog: Path,
    work: Path,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = SEEDS,
    epochs: int = 12,
    pixels: int = 150_000,
    keep: float = 0.6,
    select: Sequence[float] = (),
) -> dict[str, Any]:
    from eoforge.cube.tiles import open_cube_tile
    from eoforge.embeddings.classify import apply_classifier, export_classifier, fit_classifier
    from eoforge.embeddings.encoder import EncoderConfig, sample_pixels, save_encoder, train_encoder
    from eoforge.embeddings.field import check_field, open_field_tile, write_field

    cube, _ = load_cube(catalog, work / "cube.zarr")
    tiles = [open_cube_tile(str(cube), t) for t in (TRAIN_TILE, TEST_TILE)]
    selection = None
    if select:
        selection = select_keep(tiles[0], select, work, epochs, pixels, seeds)
        keep = selection["chosen_keep"]
    t0 = time.perf_counter()
    refl, clear, doy = sample_pixels([tiles[0]], per_tile=pixels, seed=0)
    config = EncoderConfig(dates=refl.shape[1], epochs=epochs, keep=keep)
    model = train_encoder(
        refl,
        clear,
        doy,
        config,
        progress=lambda e, n, loss: print(f"  encoder epoch {e}/{n} loss {loss:.4f}"),
    )
    train_s = time.perf_counter() - t0
    record = save_encoder(model, work / "encoder", train_s)

    field = work / "field.zarr"
    t0 = time.perf_counter()
    stats = write_field(
        [tiles[1]], model, work / "field-one.zarr", encoder_sha256=record["weights_sha256"]
    )
    embed_s = time.perf_counter() - t0
    write_field(tiles, model, field, encoder_sha256=record["weights_sha256"])
    contract = check_field(field)
    px = stats[TEST_TILE]["pixels"]

    train = TileTruth(tiles[0], open_field_tile(field, TRAIN_TILE))
    test = TileTruth(tiles[1], open_field_tile(field, TEST_TILE))
    counts = np.bincount(test.ref[test.scored], minlength=3).tolist()
    print(f"reference 33TWM: {dict(zip(CLASSES, counts, strict=True))}")
    results = fewshot_curves(train, test, shots, seeds)
    for n, row in results.items():
        print(
            f"  {n:>2} pts/class: "
            + "  ".join(
                f"{k} {row[k + '_miou']:.3f}±{row[k + '_miou_std']:.3f}"
                for k in ("embeddings_knn", "embeddings_linear", "rf_bands")
            )
        )

    idx = draw_points(train, 10, 0)
    xe = train.vec.reshape(-1, train.vec.shape[-1])[idx]
    clf = fit_classifier("knn", xe, train.ref.ravel()[idx])
    check = test.vec[test.scored][:: max(1, int(test.scored.sum()) // 2000)]
    exported = export_classifier(clf, xe.shape[1], work / "knn.onnx", check, len(CLASSES))
    ft = open_field_tile(field, TEST_TILE)
    t0 = time.perf_counter()
    apply_classifier(work / "knn.onnx", ft, work / "knn.tif")
    knn_s = time.perf_counter() - t0
    lin = fit_classifier("linear", xe, train.ref.ravel()[idx])
    exported_lin = export_classifier(lin, xe.shape[1], work / "linear.onnx", check, len(CLASSES))
    t0 = time.perf_counter()
    apply_classifier(work / "linear.onnx", ft, work / "linear.tif")
    lin_s = time.perf_counter() - t0

    km = kmeans_ami(field, test)
    ten = results.get("10") or next(iter(results.values()))
    best = max(ten["embeddings_knn_miou"], ten["embeddings_linear_miou"])
    return {
        "fewshot": results,
        "kmeans": km,
        "done_when": {
            "best_embedding_miou_at_10": best,
            "rf_bands_miou_at_10": ten["rf_bands_miou"],
            "margin": best - ten["rf_bands_miou"],
            "target_margin": 0.05,
            "met": best >= ten["rf_bands_miou"] + 0.05,
        },
        "throughput": {
            "tile": TEST_TILE,
            "pixels": px,
            "encoder_train_s": train_s,
            "embedding_s": embed_s,
            "embedding_mpx_s": px / embed_s / 1e6,
            "knn_onnx_classify_s": knn_s,
            "knn_classification_mpx_s": px / knn_s / 1e6,
            "linear_onnx_classify_s": lin_s,
            "linear_classification_mpx_s": px / lin_s / 1e6,
            "onnx_parity": {"knn": exported["parity"], "linear": exported_lin["parity"]},
        },
        "field_contract": contract,
        "encoder": {k: record[k] for k in ("objective", "parameters")}
        | {"dims": config.dims, "keep": keep, "epochs": epochs, "pixels": pixels},
        "reference_pixels_33TWM": dict(zip(CLASSES, counts, strict=True)),
        "keep_selection": selection,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per point count")
    parser.add_argument("--epochs", type=int, default=12, help="encoder training passes")
    parser.add_argument("--pixels", type=int, default=150_000, help="encoder training pixels")
    parser.add_argument(
        "--keep",
        type=float,
        default=0.6,
        help="share of clear dates shown in training (1.0: no masking, an ablation)",
    )
    parser.add_argument(
        "--select-keep",
        type=float,
        nargs="+",
        default=[],
        help="choose --keep among these on a validation block of 33TWL only (e.g. 0.6 1.0)",
    )
    args = parser.parse_args(argv)
    if not (args.catalog / "catalog.json").is_file():
        print(f"the full sample is not at {args.catalog} (../shared/data beside the checkout)")
        return 2
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eoforge-embeddings-") as tmp:
        summary = run(
            args.catalog,
            Path(tmp),
            args.shots,
            range(args.seeds),
            args.epochs,
            args.pixels,
            args.keep,
            args.select_keep,
        )
    summary["machine"] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps({k: summary[k] for k in ("done_when", "kmeans", "throughput")}, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
