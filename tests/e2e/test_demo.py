"""End to end: `eoforge demo` and `eoforge run` as a user runs them, through a real rustac STAC API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

from eoforge.testing.browser import browser_missing, check_page

EOFORGE = [sys.executable, "-m", "eoforge.cli"]


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PREFECT_HOME=str(cwd / ".prefect-home"),
        EOFORGE_STORE=str(cwd / "store"),
        MLFLOW_TRACKING_URI="",
    )
    return subprocess.run(
        [*EOFORGE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _run(
        ["demo", "--out", str(out), "--train-seconds", "25", "--store", str(tmp_path / "store")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"report: {out.resolve() / 'report.html'}" in proc.stdout
    for rel in ("provenance.json", "metrics.json", "report.html", "model/model.onnx", "items.json"):
        assert (out / rel).is_file(), rel
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "miou",
        "pixel_accuracy",
        "per_class_iou",
        "baseline_miou",
        "baseline_pixel_accuracy",
    ):
        assert key in metrics
    assert 0.3 < metrics["baseline_pixel_accuracy"] <= 1
    assert 0.3 < metrics["pixel_accuracy"] <= 1
    tifs = sorted((out / "predictions").glob("*.tif"))
    assert [t.stem for t in tifs] == [
        "S2A_33TWM_20230815_0_L2A",
        "S2A_33TWM_20230818_0_L2A",
        "S2B_33TWM_20230810_0_L2A",
        "S2B_33TWM_20230813_0_L2A",
        "S2B_33TWM_20230820_0_L2A",
    ]
    reference = json.loads((out / "model" / "drift-reference.json").read_text())
    assert reference["scenes"] >= 2 and reference["bands"] == ["blue", "green", "red", "nir"]
    for tif in tifs:
        item = json.loads(tif.with_suffix(".json").read_text())
        derived = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
        assert derived and tif.stem in derived[0]["href"]
        drift = item["properties"]["eoforge:drift"]  # the scene's profile and its drift scores
        assert set(drift["scores"]["band_shift"]) == set(reference["bands"])
        assert isinstance(drift["scores"]["drifted"], bool)
        assert abs(sum(drift["profile"]["class_fractions"]) - 1) < 1e-6
        with rasterio.open(tif) as src:
            assert src.crs.to_epsg() == 32633 and src.shape == (512, 512)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["orchestration"]["engine"] == "prefect" and prov["orchestration"]["flow_run_id"]
    assert set(prov["contracts"]) == {"items", "cube", "chips", "chip_index", "predictions"}
    assert all(c["success"] for c in prov["contracts"].values())
    assert len(prov["stac_items"]) == 10 and prov["packages"]["torch"]
    uris = {o["uri"].removeprefix("file://") for o in prov["outputs"]}
    assert str((out / "predictions" / f"{tifs[0].stem}.tif").resolve()) in uris
    assert all(len(o["sha256"]) == 64 for o in prov["outputs"])
    html = (out / "report.html").read_text()
    assert "<img src='quicklooks/confusion_model.png'" in html
    assert "random forest" in html and "precision" in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]
    # the demo's report in a real browser: every picture loads, no console error
    # (tests/eoforge/runs/test_report_page.py skips loudly without a browser)
    assert browser_missing() is None or os.environ.get("EOFORGE_REQUIRE_BROWSER") != "1"
    if browser_missing() is None:
        seen = check_page(out / "report.html")
        assert seen.problems == [] and seen.images == 8, seen.problems

    # `eoforge report` rebuilds the page from the folder alone, from another working directory
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _run(["report", str(out)], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.html").read_text() == first

    # `eoforge watch`: the local event loop predicts every landed item (with the run's model:
    # a short training may lose to the random forest and not be promoted to production)
    proc = _run(
        [
            "watch",
            "--model-dir",
            prov["training"]["model_dir"],
            "--polls",
            "1",
            "--emit-existing",
            "--out",
            str(tmp_path / "watch"),
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    polled = next(ln for ln in proc.stderr.splitlines() if ln.startswith("poll 1: "))
    assert all(t.stem in polled for t in tifs) and polled.count("_L2A") == 10
    assert len(list((tmp_path / "watch" / "predictions").glob("*.tif"))) == 10
    # the cursor remembers them: a second poll finds nothing new
    proc = _run(
        [
            "watch",
            "--model-dir",
            prov["training"]["model_dir"],
            "--polls",
            "1",
            "--out",
            str(tmp_path / "watch"),
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "poll 1: nothing new" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.e2e
def test_run_selected_stages(tmp_path: Path) -> None:
    out = tmp_path / "stages"
    proc = _run(["run", "--stages", "ingest,chips", "--plain", "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages search, ingest, chips" in proc.stderr
    for name in ("search", "ingest", "chips"):
        assert f"✓ {name}" in proc.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stages"] == ["search", "ingest", "chips"]
    assert set(prov["products"]) == {"items", "cube", "chips"}
    assert Path(prov["products"]["chips"]).is_dir()
    assert prov["products"]["items"] == str(out.resolve() / "items.json")
    assert not (out / "report.html").exists() and not (tmp_path / "store" / "models").exists()


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(body)
    return p


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ("stac:\n  datetime: 2019-01-01/2019-01-31\n", 2, "returned no items"),
        ("stac:\n  bands: [blue, green, red, swir16]\n", 2, "swir16"),
        (
            "labels:\n  classes: [other, water, cloud]\n"
            "  source: {kind: polygons, path: no-such-labels.parquet}\n",
            2,
            "labels.source.path",
        ),
    ],
)
def test_bad_search_exits_nonzero_and_writes_nothing(
    tmp_path: Path, body: str, code: int, message: str
) -> None:
    out = tmp_path / "out"
    proc = _run(
        ["run", "--config", str(_config(tmp_path, body)), "--out", str(out), "--plain"],
        cwd=tmp_path,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    assert message in proc.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".prefect-home") == ["run.yaml"]


@pytest.mark.e2e
def test_unreachable_stac_api(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, "stac:\n  max_retries: 2\n  backoff_factor: 0.05\n  timeout_s: 2\n")
    out = tmp_path / "out"
    proc = _run(
        [
            "run",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--api-url",
            f"http://127.0.0.1:{port}/",
            "--plain",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "unreachable" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
    assert not out.exists()


@pytest.mark.e2e
def test_refuses_foreign_nonempty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    proc = _run(["demo", "--out", str(out), "--plain"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "not an eoforge run" in proc.stderr
    assert (out / "thesis.docx").read_text() == "precious"
