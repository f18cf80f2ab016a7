"""``eoforge embed``: help, bad input, and a whole run on the bundled sample (slow)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import rasterio
from typer.testing import CliRunner

from eoforge.cli import app
from eoforge.runs.report_page import rebuild_report
from eoforge.testing.browser import browser_missing, check_page

runner = CliRunner()


def test_embed_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["embed", "--help"])
    assert result.exit_code == 0
    for command in ("run", "check", "publish"):
        assert command in result.output
    result = runner.invoke(app, ["embed", "run", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output


def test_bad_query_and_missing_field_fail_with_input_errors(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["embed", "run", "--query", "somewhere", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "LON,LAT" in result.output
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["embed", "check", str(tmp_path / "none.zarr")])
    assert result.exit_code == 2 and "not an embedding field" in result.output


@pytest.mark.slow
def test_embed_run_on_the_bundled_sample(tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "run"
    args = ["embed", "run", "--out", str(out), "--store", str(store), "--epochs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["eoforge_run"] == "embed"
    listed = {
        Path(o["uri"].removeprefix("file://")).relative_to(out).as_posix() for o in prov["outputs"]
    }
    for rel in ("report.html", "metrics.json", "quicklooks/embedding-pca-33TWL.png",
                "quicklooks/embedding-clusters-33TWM.png", "quicklooks/embedding-similarity-33TWL.png",
                "quicklooks/embedding-linear-33TWM.png", "quicklooks/embedding-fewshot.png",
                "quicklooks/aoi.png", "clusters/centres.json",
                "classify/knn.onnx", "classify/linear-33TWM.tif", "similarity/similarity-33TWM.tif",
                "field/encoder-item.json", "fewshot.json"):  # fmt: skip
        assert rel in listed, rel
    # the run report (the same page as `eoforge run`'s) shows the embedding pictures and scores
    page = (out / "report.html").read_text()
    assert "<h2>Embeddings</h2>" in page and "kNN on embeddings" in page
    assert len(re.findall(r"<img src='quicklooks/embedding-", page)) == 9  # 2 tiles x 4 + curves
    assert "embedding_field" in page and "encoder" in page
    if browser_missing() is None:
        seen = check_page(out / "report.html")
        assert seen.problems == [] and seen.images == 10, seen.problems
    assert rebuild_report(out).read_text() == page
    items = sorted((out / "field").glob("embedding-field-*.json"))
    assert len(items) == 2
    item = json.loads(items[0].read_text())
    assert item["assets"]["embedding"]["type"] == "application/vnd.zarr; version=3"
    assert any(lk["rel"] == "derived_from" for lk in item["links"])
    with rasterio.open(out / "similarity" / "similarity-33TWL.tif") as src:
        assert src.dtypes[0] == "float32"
    field = prov["store_products"]["field"]
    check = runner.invoke(app, ["embed", "check", field])
    assert check.exit_code == 0 and "coverage" in check.output
    # a second run reuses the stored encoder and field
    again = runner.invoke(
        app, [*args[:2], "--out", str(tmp_path / "run2"), *args[4:], "--no-evaluate"]
    )
    assert again.exit_code == 0, again.output
    stages = json.loads((tmp_path / "run2" / "provenance.json").read_text())["stages"]
    assert stages["encoder"]["reused"] and stages["field"]["reused"]
