"""The OGC Application Package of `eoforge predict`: valid CWL, and run by cwltool (without a
container, eoforge from this environment) on the bundled sample into a STAC catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pystac
import pytest
import rasterio
import yaml

from eoforge.config import BUNDLED_CATALOG
from eoforge.export.mlm import MODEL_ITEM_NAME, model_item
from eoforge.io.atomic import write_json_atomic

CWL = resources.files("eoforge.orchestration") / "deployments" / "cwl" / "eoforge-predict.cwl"
CWLTOOL = [sys.executable, "-m", "cwltool"]
BANDS = ["blue", "green", "red", "nir"]
CLASSES = ["water", "vegetation", "bare"]


def _cwltool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # eoforge on the PATH as it would be in the image
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [*CWLTOOL, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_application_package_is_valid_cwl(tmp_path: Path) -> None:
    with resources.as_file(CWL) as cwl:
        done = _cwltool(["--validate", str(cwl)], tmp_path)
        doc = yaml.safe_load(cwl.read_text())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is valid CWL" in done.stderr + done.stdout
    # what the OGC best practice asks for: a Workflow + CommandLineTool in one $graph, the
    # container and the resources it needs, a Directory (STAC catalog) out
    graph = {p["id"]: p for p in doc["$graph"]}
    assert graph["eoforge-predict"]["class"] == "Workflow"
    tool = graph["predict"]
    assert tool["class"] == "CommandLineTool" and tool["baseCommand"] == ["eoforge", "predict"]
    assert tool["hints"]["DockerRequirement"]["dockerPull"].startswith("eoforge/worker-cpu:")
    assert {"coresMin", "ramMin"} <= set(tool["hints"]["ResourceRequirement"])
    assert graph["eoforge-predict"]["outputs"]["predictions"]["type"] == "Directory"
    assert doc["s:softwareVersion"]


def _model(folder: Path) -> Path:
    """An exported model folder: a per-pixel ONNX classifier, its config and its STAC item."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True)
    weight = np.array([[0, 0, 0, -40], [0, 0, -30, 30], [0, 0, 25, -5]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["image", "scale"], ["x"]),
            helper.make_node("Conv", ["x", "w", "b"], ["logits"]),
        ],
        "pixel",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        initializer=[
            numpy_helper.from_array(weight.reshape(3, 4, 1, 1), "w"),
            numpy_helper.from_array(np.array([6, 0, 1], np.float32), "b"),
            numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "model.json").write_text(json.dumps({"bands": BANDS, "classes": CLASSES}))
    item = model_item(folder / "model.onnx", folder / "model.json", BANDS, CLASSES)
    write_json_atomic(folder / MODEL_ITEM_NAME, item)
    return folder


@pytest.mark.slow
def test_application_package_runs_on_the_bundled_sample(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "catalog": {"class": "Directory", "path": str(BUNDLED_CATALOG)},
                "model": {"class": "Directory", "path": str(_model(tmp_path / "model"))},
                "datetime": "2023-08-15T00:00:00Z/2023-08-15T23:59:59Z",
            }
        )
    )
    out = tmp_path / "out"
    with resources.as_file(CWL) as cwl:
        done = _cwltool(
            ["--no-container", "--outdir", str(out), f"{cwl}#eoforge-predict", str(job)], tmp_path
        )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    catalog_dir = Path(result["predictions"]["path"])
    assert catalog_dir.parent == out
    catalog = pystac.Catalog.from_file(str(catalog_dir / "catalog.json"))
    items = sorted(catalog.get_items(recursive=True), key=lambda i: i.id)
    # the two scenes of 2023-08-15 (33TWL, 33TWM), nothing else
    assert [i.id for i in items] == [
        "S2A_33TWL_20230815_0_L2A-prediction",
        "S2A_33TWM_20230815_0_L2A-prediction",
    ]
    for item in items:
        classes = Path(item.assets["classification"].get_absolute_href() or "")
        uncertainty = Path(item.assets["uncertainty"].get_absolute_href() or "")
        with rasterio.open(classes) as src:
            assert src.count == 1 and src.crs.to_epsg() == 32633
            values = set(src.read(1).ravel().tolist())
        assert values <= {0, 1, 2, 255} and len(values - {255}) >= 2
        with rasterio.open(uncertainty) as src:
            assert src.count == 2 and src.descriptions is not None
        assert item.assets["uncertainty"].extra_fields["file:size"] == uncertainty.stat().st_size
