"""Tests of eoforge.runs.report_page: a run's HTML report, read as text and opened in a real
headless Chromium (Playwright driving the system's ``chromium``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoforge.config import BUNDLED_CATALOG
from eoforge.errors import InputError
from eoforge.runs.report import (
    class_map_png,
    confusion_png,
    learning_curves_png,
    true_colour_png,
    uncertainty_png,
)
from eoforge.runs.report_page import rebuild_report, write_run_report
from eoforge.testing.browser import browser_missing, check_page
from eoforge.training.metrics import metrics_from_confusion

NAMES = ["vegetation", "bare", "water", "cloud", "shadow"]


def _items() -> list[dict[str, Any]]:
    """The bundled sample's real STAC items."""
    return [json.loads(p.read_text()) for p in sorted(BUNDLED_CATALOG.glob("*/*.json"))]


def demo_like_run(run: Path) -> Path:
    """A run folder laid out as ``eoforge demo`` writes it, on tiny in-code data."""
    rng = np.random.default_rng(0)
    ql = run / "quicklooks"
    true_colour_png(rng.integers(1, 4000, (4, 32, 32)), ql / "true_colour.png")
    truth = rng.integers(0, 5, (32, 32)).astype(np.uint8)
    class_map_png(truth, NAMES, ql / "label.png", "Label")
    class_map_png(truth, NAMES, ql / "prediction.png", "Model prediction")
    class_map_png(truth[::-1], NAMES, ql / "baseline.png", "Random forest")
    entropy = rng.integers(0, 255, (32, 32)).astype(np.uint8)  # 255: nodata
    uncertainty_png(entropy, ql / "uncertainty.png", "Model uncertainty")
    cm_model = np.diag([50, 40, 30, 20, 10]) + 2
    cm_base = np.diag([40, 30, 20, 10, 5]) + 5
    confusion_png(cm_model, NAMES, ql / "confusion_model.png", "Model confusion")
    confusion_png(cm_base, NAMES, ql / "confusion_baseline.png", "Random forest confusion")
    learning_curves_png(
        [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_miou": 0.4}],
        ql / "learning_curves.png",
    )
    model, base = metrics_from_confusion(cm_model, NAMES), metrics_from_confusion(cm_base, NAMES)
    metrics = {"miou": model["miou"], "model": model, "baseline": base, "classes": NAMES}
    (run / "metrics.json").write_text(json.dumps(metrics))
    items = _items()
    (run / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (run / "predictions").mkdir()
    (run / "predictions" / f"{items[0]['id']}.tif").write_bytes(b"II*\x00")
    record = {
        "eoforge_run": run.name,
        "parameters": {
            "stac": {
                "collection": "sentinel-2-l2a",
                "catalog_dir": str(BUNDLED_CATALOG),
                "datetime": "2023-08-01/2023-08-31",
                "bbox": [15.2, 45.2, 16.2, 45.9],
                "bands": ["blue", "green", "red", "nir"],
            }
        },
        "stage_seconds": {"search": 2.0, "train": 40.5, "baseline": 12.25},
        "reused_from_store": {"train": False},
        "contracts": {
            "items": {"stage": "items", "success": True, "rows": 10, "evaluated": 11},
            "cube": {"stage": "cube", "success": True, "rows": 50, "evaluated": 13},
        },
        "chip_counts": {"train": 512, "val": 64, "test": 64},
        "training": {"epochs_run": 30, "best_epoch": 28, "device": "cpu", "onnx_opset": 17},
        "orchestration": {"engine": "prefect"},
    }
    (run / "provenance.json").write_text(json.dumps(record))
    write_run_report(run, metrics, record, items)
    return run / "report.html"


def test_run_report_shows_both_systems_inputs_timings_contracts(tmp_path: Path) -> None:
    page = demo_like_run(tmp_path / "demo").read_text().replace("\n", "")
    # model vs random forest side by side, per class: precision, recall, F1 and support
    assert "<th>model</th><th>random forest</th>" in page
    for label in ("IoU", "precision", "recall", "F1", "support (pixels)"):
        assert label in page
    model = json.loads((tmp_path / "demo" / "metrics.json").read_text())["model"]
    assert f"<td>{model['per_class_precision']['water']:.3f}</td>" in page or (
        f"<td class=best>{model['per_class_precision']['water']:.3f}</td>" in page
    )
    assert f"<td>{model['support']['vegetation']}</td>" in page
    per_class = page.split("Per class")[1].split("</table>")[0]
    assert "–" not in per_class and per_class.count("<tr><td>") == len(NAMES)
    # inputs, area map, timings, contracts, chips
    assert "2023-08-01/2023-08-31" in page and "15.200, 45.200, 16.200, 45.900" in page
    assert "S2B_33TWM_20230810_0_L2A" in page
    assert (tmp_path / "demo" / "quicklooks" / "aoi.png").is_file()
    assert "40.50" in page and "12.25" in page and "2/2" in page
    assert "<td>512</td>" in page
    # every picture is referenced relative to the page, whatever the working directory
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 9 and all(s.startswith("quicklooks/") for s in srcs)
    # the model's uncertainty between its prediction and the random forest's
    trio = page.split("<div class='pair trio'>")[1].split("</div>")[0]
    assert re.findall(r"quicklooks/(\w+)\.png", trio) == ["prediction", "uncertainty", "baseline"]


def test_rebuild_report_from_the_run_folder(tmp_path: Path) -> None:
    report = demo_like_run(tmp_path / "run")
    first = report.read_text()
    # as a run writes them: keys sorted (classes, stages, contracts, splits out of order)
    for name in ("metrics.json", "provenance.json"):
        data = json.loads((tmp_path / "run" / name).read_text())
        (tmp_path / "run" / name).write_text(json.dumps(data, sort_keys=True))
    report.unlink()
    assert rebuild_report(tmp_path / "run").read_text() == first
    with pytest.raises(InputError, match="not a finished eoforge run folder"):
        rebuild_report(tmp_path)


def browser_or_skip() -> None:
    """Skip loudly without a browser; in CI (EOFORGE_REQUIRE_BROWSER=1) fail instead."""
    why = browser_missing()
    if why is None:
        return
    if os.environ.get("EOFORGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required here but {why}")
    pytest.skip(f"real-browser test skipped: {why}")


def test_report_in_a_real_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser_or_skip()
    report = demo_like_run(tmp_path / "demo")
    monkeypatch.chdir(tmp_path)  # the page must not depend on the working directory
    seen = check_page(report, screenshot=tmp_path / "shot.png")
    assert seen.problems == [], seen.problems
    assert seen.images == 9
    assert "random forest" in seen.text and "precision" in seen.text
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_browser_check_catches_a_broken_image(tmp_path: Path) -> None:
    browser_or_skip()
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><link rel='icon' href='data:,'></head><body>"
        "<img src='../../quicklooks/missing.png'><script>console.error('boom')</script>"
        "</body></html>"
    )
    seen = check_page(page)
    assert seen.broken_images == ["../../quicklooks/missing.png"]
    assert "boom" in seen.console_errors


def embed_like_run(run: Path) -> Path:
    """A run folder laid out as ``eoforge embed run`` writes it, on tiny in-code data: the
    pictures are made by the embed run's own functions from a small embedding cube."""
    from eoforge.cube.channels import write_channel_cube
    from eoforge.embeddings.tiles import open_embedding_tiles
    from eoforge.embeddings.unsupervised import cluster_map, fit_kmeans, similarity_map
    from eoforge.runs.embed import stage_embed_report
    from eoforge.testing.embeddings import embedding_item

    rng = np.random.default_rng(0)
    values = rng.integers(-127, 128, (6, 48, 64)).astype(np.int8)
    write_channel_cube([embedding_item(run / "src", "e", values)], "embedding", run / "e.zarr")
    (tile,) = open_embedding_tiles(run / "e.zarr")
    km = fit_kmeans([tile], 4)
    cluster_map(km, tile, run / "clusters" / "clusters-33TWL.tif")
    similarity_map(tile.rows(slice(10, 11))[0][0, 5], tile, run / "similarity" / "s.tif")
    row = {f"{k}_miou": v for k, v in (("embeddings_knn", 0.47), ("embeddings_linear", 0.45),
                                        ("rf_bands", 0.44))}  # fmt: skip
    row |= {f"{k}_std": 0.01 for k in list(row)}
    results = {
        "clusters": {"maps": {"33TWL": str(run / "clusters" / "clusters-33TWL.tif")}, "k": 4},
        "similarity": {"maps": {"33TWL": str(run / "similarity" / "s.tif")}, "query_tile": "33TWL"},
        "classify": {"labels": "10 points per class", "points": 30, "classes": ["a", "b", "c"],
                     "knn": {"parity": 1.0}, "linear": {"parity": 1.0}},
        "evaluate": {"train_tile": "33TWL", "test_tile": "33TWM",
                     "fewshot": {"5": row, "10": {**row, "embeddings_knn_miou": 0.474}}},
    }  # fmt: skip
    metrics = {"embeddings": stage_embed_report(run, str(run / "e.zarr"), results)["embeddings"]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    items = _items()
    (run / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    record = {
        "eoforge_run": "embed",
        "parameters": {"stac": {"collection": "sentinel-2-l2a", "bbox": [15.2, 45.2, 16.2, 45.9]}},
        "stage_seconds": {"search": 1.0, "encoder": 30.5, "field": 4.0, "clusters": 2.0},
        "reused_from_store": {"encoder": False},
        "contracts": {"embedding_field": {"stage": "embedding_field", "success": True, "rows": 1,
                                          "evaluated": 3}},
    }  # fmt: skip
    (run / "provenance.json").write_text(json.dumps(record))
    write_run_report(run, metrics, record, items)
    return run / "report.html"


def test_embed_run_report_shows_the_embedding_pictures_and_scores(tmp_path: Path) -> None:
    page = embed_like_run(tmp_path / "embed").read_text().replace("\n", "")
    assert "<h2>Embeddings</h2>" in page and "Model vs random forest" not in page
    srcs = re.findall(r"<img src='([^']+)'", page)
    # PCA RGB, cluster map, similarity map, few-shot curves, and the area map
    assert sorted(srcs) == sorted(
        f"quicklooks/{n}.png"
        for n in ("embedding-pca-33TWL", "embedding-clusters-33TWL", "embedding-similarity-33TWL",
                  "embedding-fewshot", "aoi")
    )  # fmt: skip
    assert all((tmp_path / "embed" / s).is_file() for s in srcs)
    # the few-shot table and cards (10 points per class: kNN against the random forest)
    assert "<td>10</td><td>0.474 ± 0.010</td><td>0.450 ± 0.010</td><td>0.440 ± 0.010</td>" in page
    assert "mIoU, kNN on embeddings (10 points/class)" in page and "<b>0.474</b>" in page
    assert "30.50" in page and "1/1" in page and "clusters/clusters-33TWL.tif" in page
    first = page
    (tmp_path / "embed" / "report.html").unlink()
    assert rebuild_report(tmp_path / "embed").read_text().replace("\n", "") == first


def test_embed_report_in_a_real_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser_or_skip()
    report = embed_like_run(tmp_path / "embed")
    monkeypatch.chdir(tmp_path)
    seen = check_page(report, screenshot=tmp_path / "shot.png")
    assert seen.problems == [], seen.problems
    assert seen.images == 5
    assert "Embeddings" in seen.text and "kNN on embeddings" in seen.text
    assert "points per class" in seen.text
