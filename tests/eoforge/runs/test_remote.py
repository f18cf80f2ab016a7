"""Prediction runs on an object store (eoforge.runs.remote): `eoforge predict` reading its model
from and publishing its run to ``s3://`` on a real moto_server, what it refuses, and how a
half-published run is recovered."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rasterio
import yaml
from eoforge_test_helpers import tiny_exported_model  # type: ignore[import-not-found]

from eoforge.errors import InputError
from eoforge.runs.remote import MARKER, publish_run, remote_run, remote_run_names

pytestmark = pytest.mark.e2e

BUCKET = "eoforge-runs"
ITEM = "S2A_33TWL_20230815_0_L2A"


@pytest.fixture(scope="module")
def s3_env(aws_env: dict[str, str]) -> dict[str, str]:
    """The AWS_* variables of a moto_server with the bucket made."""
    _fs().mkdir(BUCKET)
    return aws_env


def _fs() -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _objects(prefix: str) -> dict[str, str]:
    """name -> ETag of every object under ``BUCKET/prefix``."""
    fs = _fs()
    root = f"{BUCKET}/{prefix}"
    if not fs.exists(root):
        return {}
    return {p[len(root) + 1 :]: fs.info(p)["ETag"] for p in fs.find(root)}


@pytest.fixture(scope="module")
def s3_model(s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tiny_exported_model(tmp_path_factory.mktemp("chips"), tmp_path_factory.mktemp("m"))
    config = json.loads((folder / "model.json").read_text())  # trained on the sample's units
    config["input_units"] = {b: {"offset": 0.0, "scale": 0.0001} for b in config["bands"]}
    (folder / "model.json").write_text(json.dumps(config))
    uri = f"s3://{BUCKET}/models/tiny"
    _fs().put(f"{folder}/", f"{BUCKET}/models/tiny/", recursive=True)
    return uri


def _predict(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({"stac": {"datetime": "2023-08-15/2023-08-15", "max_items": 1}}))
    run_env = dict(os.environ, **env, EOFORGE_STORE=str(tmp / "store"), MLFLOW_TRACKING_URI="")
    return subprocess.run(
        [sys.executable, "-m", "eoforge.cli", "predict", "--config", str(spec), *args],
        cwd=tmp,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_reads_its_model_from_and_publishes_its_run_to_s3(
    s3_env: dict[str, str], s3_model: str, tmp_path: Path
) -> None:
    out = f"s3://{BUCKET}/runs/aoi"
    done = _predict(tmp_path, s3_env, "--model", s3_model, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"predictions: {out}/predictions" in done.stdout
    names = _objects("runs/aoi")
    assert MARKER not in names and not (tmp_path / "s3:").exists()
    for name in ("catalog.json", "items.json", "provenance.json", "model/model.onnx"):
        assert name in names
    assert {f"predictions/{ITEM}.tif", f"predictions/{ITEM}.json"} <= set(names)
    assert f"uncertainty/{ITEM}.tif" in names
    fs = _fs()
    prov = json.loads(fs.cat_file(f"{BUCKET}/runs/aoi/provenance.json"))
    assert prov["model_dir"] == s3_model
    listed = {o["uri"]: o["sha256"] for o in prov["outputs"]}
    assert set(listed) == {f"{out}/{n}" for n in names if n != "provenance.json"}
    for uri, digest in listed.items():  # what was recorded is what was published
        assert hashlib.sha256(fs.cat_file(uri.removeprefix("s3://"))).hexdigest() == digest
    cog_bytes = fs.cat_file(f"{BUCKET}/runs/aoi/predictions/{ITEM}.tif")
    with rasterio.MemoryFile(cog_bytes) as mem, mem.open() as cog:
        assert cog.count == 1 and cog.crs is not None and cog.read(1).max() < 3
    item = json.loads(fs.cat_file(f"{BUCKET}/runs/aoi/predictions/{ITEM}.json"))
    assert item["assets"]["classification"]["href"] == f"./{ITEM}.tif"  # relative: portable

    # the same run again replaces it; a model-less prefix is named
    again = _predict(tmp_path, s3_env, "--model", s3_model, "--out", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_objects("runs/aoi")) == set(names)
    missing = _predict(tmp_path, s3_env, "--model", f"s3://{BUCKET}/models/none", "--out", out)
    assert missing.returncode == 2 and "lacks ['model.onnx', 'model.json']" in missing.stderr


def test_a_prefix_with_anything_else_in_it_is_refused_untouched(
    s3_env: dict[str, str], s3_model: str, tmp_path: Path
) -> None:
    _fs().pipe_file(f"{BUCKET}/mine/notes.txt", b"my notes")
    before = _objects("mine")
    done = _predict(tmp_path, s3_env, "--model", s3_model, "--out", f"s3://{BUCKET}/mine")
    assert done.returncode == 2
    assert "will not replace it" in done.stderr and "notes.txt" in done.stderr
    assert _objects("mine") == before
    # a missing bucket fails before any work, and leaves nothing
    nobucket = _predict(tmp_path, s3_env, "--model", s3_model, "--out", "s3://no-such-bucket/r")
    assert nobucket.returncode == 2 and "bucket does not exist" in nobucket.stderr
    assert "infer" not in nobucket.stderr


def test_a_half_published_run_is_proven_ours_and_replaced(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    uri = f"s3://{BUCKET}/half"
    fs = _fs()
    # an upload killed after its marker and one file: no provenance.json yet
    marker = {"eoforge": "publishing", "names": ["old.tif", "items.json", "provenance.json"]}
    fs.pipe_file(f"{BUCKET}/half/{MARKER}", json.dumps(marker).encode())
    fs.pipe_file(f"{BUCKET}/half/old.tif", b"old")
    assert remote_run_names(uri) == {MARKER, "old.tif"}
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "new.tif").write_bytes(b"new")
    (run / "items.json").write_text("{}")
    listed = [{"uri": f"{uri}/{n}"} for n in ("predictions/new.tif", "items.json")]
    (run / "provenance.json").write_text(json.dumps({"eoforge_run": "predict", "outputs": listed}))
    publish_run(run, uri)
    assert set(_objects("half")) == {"predictions/new.tif", "items.json", "provenance.json"}
    # a failed run leaves a previous run as it was, and no marker
    before = _objects("half")
    with pytest.raises(RuntimeError, match="boom"), remote_run(uri) as staging:
        (staging / "x.tif").write_bytes(b"x")
        raise RuntimeError("boom")
    assert _objects("half") == before
    with pytest.raises(InputError, match="will not replace"):
        fs.pipe_file(f"{BUCKET}/half/stranger.txt", b"?")
        remote_run_names(uri)


def test_commands_that_write_local_folders_refuse_urls(tmp_path: Path) -> None:
    env = dict(os.environ, EOFORGE_STORE=str(tmp_path / "store"), MLFLOW_TRACKING_URI="")
    spec = tmp_path / "spec.yaml"
    spec.write_text("stac: {max_items: 1}\n")
    for args in (
        ["run", "--plain", "--out", "s3://bucket/run"],
        ["run", "--plain", "--out", str(tmp_path / "r"), "--store", "s3://bucket/store"],
        ["demo", "--plain", "--out", "s3://bucket/demo"],
        ["watch", "--polls", "1", "--out", "s3://bucket/watch"],
        ["predict", "--model", "m", "--config", str(spec), "--store", "s3://bucket/store"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "eoforge.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert "is a URL, but this command writes a local folder" in done.stderr
        assert "s3://bucket/" in done.stderr
    assert not (tmp_path / "s3:").exists()
