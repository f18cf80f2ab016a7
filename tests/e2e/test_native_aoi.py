"""End to end at native resolution: `eoforge run` and `eoforge predict` over an area of
interest on records exactly as Earth Search serves them (10 m bands, 20 m SCL, scale/offset),
with items of two processing baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from eoforge.config import BUNDLED_CATALOG
from eoforge.testing.native import write_native_catalog

EOFORGE = [sys.executable, "-m", "eoforge.cli"]
TWL, TWM = "S2A_33TWL_20230815_0_L2A", "S2B_33TWM_20230810_0_L2A"
TWL2, TWM2 = "S2B_33TWL_20230813_0_L2A", "S2B_33TWM_20230813_0_L2A"


def _eoforge(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PREFECT_HOME=str(cwd / ".prefect-home"),
        EOFORGE_STORE=str(cwd / "store"),
        MLFLOW_TRACKING_URI="",
    )
    return subprocess.run([*EOFORGE, *args], cwd=cwd, capture_output=True, text=True, env=env)


def _spec(path: Path, catalog: Path, bbox: list[float], **extra: object) -> Path:
    spec = {
        "stac": {"catalog_dir": str(catalog), "bbox": bbox, **extra},
        "train": {"max_epochs": 2, "max_seconds": 300},
        "chips": {"stride": 128},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
@pytest.mark.e2e
def test_run_and_predict_over_an_aoi(tmp_path: Path) -> None:
    catalog = tmp_path / "native"
    variants = {TWM: {"RAW": "2023-08-11T09:57:57Z"}}  # offset not applied: values +1000
    write_native_catalog(
        BUNDLED_CATALOG, catalog, [TWL, TWL2, TWM, TWM2], (0, 0, 1440, 1440), variants
    )
    # ~12 km wide, across both crops (33TWL's is ~90 km south of 33TWM's)
    bbox = [15.33, 45.73, 15.48, 46.70]
    run = _eoforge(
        ["run", "--plain", "--config", str(_spec(tmp_path / "run.yaml", catalog, bbox)),
         "--out", str(tmp_path / "run")],
        tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    model = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert model["input_units"]["red"] == {"scale": 0.0001, "offset": 0.0}

    small = [15.40, 46.62, 15.46, 46.68]  # ~4.6 x 6.7 km inside 33TWM's crop
    spec = _spec(tmp_path / "aoi.yaml", catalog, small, datetime="2023-08-10/2023-08-12")
    pred = _eoforge(
        ["predict", "--model", str(tmp_path / "run" / "model"), "--config", str(spec),
         "--out", str(tmp_path / "pred")],
        tmp_path,
    )  # fmt: skip
    assert pred.returncode == 0, pred.stderr[-3000:]
    tifs = sorted((tmp_path / "pred" / "predictions").glob("*.tif"))
    assert [t.stem for t in tifs] == [TWM, f"{TWM}_RAW"]
    maps = []
    for tif in tifs:
        with rasterio.open(tif) as src:
            assert src.res == (10.0, 10.0)
            # the cube holds the AOI, not the crop: ~460 x 670 px of 10 m
            assert 400 <= src.width <= 520 and 600 <= src.height <= 740, src.shape
            maps.append(src.read(1))
    # harmonised: the item with the offset not applied gets the very same classes
    assert np.array_equal(maps[0], maps[1])
    prov = json.loads((tmp_path / "pred" / "provenance.json").read_text())
    assert prov["eoforge_run"] == "predict" and len(prov["stac_items"]) == 2
    done = prov["inference"]  # where the infer stage's time went
    assert done["pixels"] == sum(m.size for m in maps)
    assert done["window_pixels"] >= done["pixels"]  # overlapping windows
    assert 0 < done["model_seconds"] < prov["stage_seconds"]["infer"]

    # the same AOI without harmonising: the cube's units differ from the model's -> refused
    raw = _spec(tmp_path / "raw.yaml", catalog, small, datetime="2023-08-10/2023-08-12")
    data = yaml.safe_load(raw.read_text())
    data["cube"] = {"harmonise": False}
    raw.write_text(yaml.safe_dump(data))
    refused = _eoforge(
        ["predict", "--model", str(tmp_path / "run" / "model"), "--config", str(raw),
         "--out", str(tmp_path / "pred-raw")],
        tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "other units than the model was trained on" in " ".join(refused.stderr.split())
    assert not (tmp_path / "pred-raw").exists()


def test_predict_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "s.yaml", BUNDLED_CATALOG, [15.4, 45.4, 15.5, 45.5])
    proc = _eoforge(
        ["predict", "--model", str(tmp_path), "--config", str(spec), "--out", str(tmp_path / "o")],
        tmp_path,
    )
    assert proc.returncode == 2
    assert "lacks ['model.onnx', 'model.json']" in " ".join(proc.stderr.split())
    assert not (tmp_path / "o").exists()
