"""Tests of eoforge.export.mlm: the model's STAC item (MLM extension) and the band check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pystac
import pystac.validation
import pytest
from eoforge_test_helpers import vendored_validator  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

from eoforge.errors import InputError
from eoforge.export.mlm import (
    MLM_SCHEMA,
    check_model_matches,
    model_bands,
    model_item,
    training_extent,
)

BANDS = ["blue", "green", "red", "nir"]
CLASSES = ["vegetation", "bare", "water", "cloud", "shadow"]


def onnx_model(path: Path, channels: Any = 4, classes: int = 5) -> Path:
    w = np.zeros((classes, channels if isinstance(channels, int) else 4, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])],
        "m",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory like the train + export stages write (ADR 0001)."""
    d = tmp_path / "model"
    d.mkdir()
    onnx_model(d / "model.onnx")
    save_file(
        {
            "head.weight": np.zeros((5, 16, 1, 1), np.float32),
            "head.bias": np.zeros(5, np.float32),
            "bn.num_batches_tracked": np.zeros((), np.int64),
        },
        str(d / "model.safetensors"),
    )
    config = {
        "format": "eoforge-model/1",
        "architecture": {"name": "unet", "depth": 3, "in_channels": 4, "num_classes": 5},
        "bands": BANDS,
        "classes": CLASSES,
        "band_mean": [1300.0, 1400.0, 1200.0, 3700.0],
        "band_std": [2000.0, 1900.0, 1800.0, 1400.0],
        "chip_size": 64,
        "ignore_index": 255,
        "hyper_params": {"seed": 0, "learning_rate": 0.003, "batch_size": 16},
        "torch_version": "2.13.0+cpu",
    }
    (d / "model.json").write_text(json.dumps(config))
    return d


SOURCES = [
    {
        "id": "S2A_33TWL_20230815_0_L2A",
        "bbox": [15.3, 45.2, 16.1, 45.8],
        "properties": {"datetime": "2023-08-15T09:58:11Z"},
        "links": [{"rel": "self", "href": "http://127.0.0.1:7822/items/a"}],
    },
    {
        "id": "S2B_33TWL_20230820_0_L2A",
        "bbox": [15.2, 45.3, 16.0, 45.9],
        "properties": {"datetime": "2023-08-20T09:58:11Z"},
        "links": [{"rel": "self", "href": "http://127.0.0.1:7822/items/b"}],
    },
]


def _item(model_dir: Path, **kwargs: Any) -> dict[str, Any]:
    return model_item(
        model_dir / "model.onnx",
        model_dir / "model.json",
        BANDS,
        CLASSES,
        weights_path=model_dir / "model.safetensors",
        training_items=SOURCES,
        batch_size_suggestion=4,
        **kwargs,
    )


def test_model_item_describes_the_model(model_dir: Path) -> None:
    d = _item(model_dir)
    props = d["properties"]
    assert MLM_SCHEMA in d["stac_extensions"]
    assert props["mlm:name"] == "eoforge-unet" and props["mlm:architecture"] == "U-Net"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:framework"] == "PyTorch" and props["mlm:framework_version"] == "2.13.0+cpu"
    assert props["mlm:total_parameters"] == 5 * 16 + 5  # float tensors only
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None
    assert props["mlm:batch_size_suggestion"] == 4
    (inp,) = props["mlm:input"]
    assert inp["name"] == "image" and inp["bands"] == BANDS
    assert inp["input"] == {
        "shape": [-1, 4, -1, -1],
        "dim_order": ["batch", "channel", "height", "width"],
        "data_type": "float32",
    }
    assert inp["value_scaling"] is None  # normalisation is inside the graph (ADR 0001)
    assert props["mlm:hyperparameters"]["band_mean"] == [1300.0, 1400.0, 1200.0, 3700.0]
    (out,) = props["mlm:output"]
    assert out["result"]["shape"] == [-1, 5, -1, -1]
    assert out["result"]["dim_order"] == ["batch", "class", "height", "width"]
    assert out["classification:classes"][2] == {"value": 2, "name": "water", "description": "water"}
    # extent of the training items, open datetime with start / end
    assert d["bbox"] == [15.2, 45.2, 16.1, 45.9] and props["datetime"] is None
    assert props["start_datetime"].startswith("2023-08-15")
    assert props["end_datetime"].startswith("2023-08-20")
    assert [link["href"] for link in d["links"] if link["rel"] == "derived_from"] == [
        "http://127.0.0.1:7822/items/a",
        "http://127.0.0.1:7822/items/b",
    ]


def test_assets_have_checksums(model_dir: Path) -> None:
    assets = _item(model_dir)["assets"]
    assert set(assets) == {"model", "weights", "config"}
    model = assets["model"]
    assert model["href"] == "./model.onnx" and "mlm:model" in model["roles"]
    assert model["mlm:artifact_type"] == "onnx" and model["mlm:framework"] == "ONNX"
    assert [b["name"] for b in model["bands"]] == BANDS
    for key, name in (("model", "model.onnx"), ("weights", "model.safetensors")):
        digest = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        assert assets[key]["file:checksum"] == "1220" + digest  # sha2-256 multihash
        assert assets[key]["file:size"] == (model_dir / name).stat().st_size
    assert "mlm:weights" in assets["weights"]["roles"]


def test_item_is_deterministic_valid_stac(model_dir: Path) -> None:
    d = _item(model_dir)
    assert d == _item(model_dir)
    assert d["id"] == "eoforge-unet-" + d["assets"]["model"]["file:checksum"][4:16]
    item = pystac.Item.from_dict(d)
    assert item.to_dict(include_self_link=False, transform_hrefs=False) == d
    assert pystac.validation.validate_dict(json.loads(json.dumps(d)), extensions=[])


def test_item_full_schema_validation(model_dir: Path) -> None:
    """Core, MLM and file schemas (vendored as test data, with the schemas MLM refers to):
    runs offline, in CI."""
    d = json.loads(json.dumps(_item(model_dir)))
    validator = vendored_validator()
    checked = pystac.validation.validate_dict(d, validator=validator)
    assert set(checked[1:]) == set(d["stac_extensions"]) and MLM_SCHEMA in checked
    bad = json.loads(json.dumps(d))
    del bad["properties"]["mlm:output"]  # required by MLM
    with pytest.raises(pystac.STACValidationError, match="mlm"):
        pystac.validation.validate_dict(bad, validator=validator)


def test_z_score_when_normalisation_is_outside(model_dir: Path) -> None:
    inp = _item(model_dir, normalisation_in_graph=False)["properties"]["mlm:input"][0]
    assert inp["value_scaling"][0] == {"type": "z-score", "mean": 1300.0, "stddev": 2000.0}
    assert len(inp["value_scaling"]) == 4


def test_random_forest_item(tmp_path: Path) -> None:
    onnx_model(tmp_path / "baseline.onnx")
    config = {
        "architecture": {"name": "random-forest", "in_channels": 4},
        "framework": "scikit-learn",
        "framework_version": "1.9.1",
        "bands": BANDS,
        "classes": CLASSES,
        "hyper_params": {"n_estimators": 60, "max_depth": 18},
    }
    d = model_item(tmp_path / "baseline.onnx", config, BANDS, CLASSES, name="eoforge-rf")
    props = d["properties"]
    assert props["mlm:architecture"] == "Random Forest"
    assert props["mlm:framework"] == "scikit-learn"
    assert props["mlm:hyperparameters"]["n_estimators"] == 60
    assert set(d["assets"]) == {"model"} and d["geometry"] is None
    assert props["start_datetime"] < props["end_datetime"]
    checked = pystac.validation.validate_dict(d, validator=vendored_validator())
    assert MLM_SCHEMA in checked


def test_model_item_refuses_inconsistent_input(model_dir: Path, tmp_path: Path) -> None:
    onnx_path, config = model_dir / "model.onnx", model_dir / "model.json"
    with pytest.raises(InputError, match="bands"):
        model_item(onnx_path, config, ["blue", "green", "red"], CLASSES)
    with pytest.raises(InputError, match="classes"):
        model_item(onnx_path, config, BANDS, CLASSES[:4])
    with pytest.raises(InputError, match="takes 3 bands"):
        model_item(onnx_model(tmp_path / "m3.onnx", channels=3), {}, BANDS, CLASSES)
    with pytest.raises(InputError, match="letters"):
        model_item(onnx_path, {}, BANDS, ["no spaces", "b"])
    with pytest.raises(InputError, match="mlm:name"):
        model_item(onnx_path, config, BANDS, CLASSES, name="1-bad")
    with pytest.raises(InputError, match="does not exist"):
        model_item(tmp_path / "missing.onnx", config, BANDS, CLASSES)
    dynamic = onnx_model(tmp_path / "dyn.onnx", channels="C")  # dynamic band count: accepted
    assert model_item(dynamic, {}, BANDS, CLASSES)["properties"]["mlm:input"][0]["bands"] == BANDS


def test_check_model_matches(model_dir: Path) -> None:
    item = _item(model_dir)
    assert model_bands(item) == BANDS
    check_model_matches(item, BANDS)
    with pytest.raises(InputError, match="another order") as err:
        check_model_matches(item, ["green", "blue", "red", "nir"])
    assert "eoforge-unet" in str(err.value) and str(BANDS) in str(err.value)
    with pytest.raises(InputError, match=r"lack \['nir'\]"):
        check_model_matches(item, ["blue", "green", "red"])
    with pytest.raises(InputError, match=r"extra bands \['swir16'\]"):
        check_model_matches(item, [*BANDS, "swir16"])
    with pytest.raises(InputError, match="no mlm:input"):
        check_model_matches({"id": "x", "properties": {}}, BANDS)
    # band objects are accepted as well as names
    objects = json.loads(json.dumps(item))
    objects["properties"]["mlm:input"][0]["bands"] = [{"name": b} for b in BANDS]
    check_model_matches(objects, BANDS)


def test_training_extent_without_items() -> None:
    geometry, bbox, start, end = training_extent([])
    assert geometry is None and bbox is None and start < end
