"""int8 static quantization of an exported UNet: QDQ convolutions, class maps close to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
import torch
from safetensors.torch import save_file

from eoforge.config import BUNDLED_CATALOG, InferSpec
from eoforge.errors import InputError
from eoforge.export.onnx import export_onnx
from eoforge.export.quantize import INT8_MODEL_NAME, quantize_int8, with_int8_asset
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME, open_session
from eoforge.training.files import MODEL_CONFIG_NAME, MODEL_FORMAT, MODEL_WEIGHTS_NAME
from eoforge.training.models import ARCHITECTURE, DEPTH, build_model

FILES = ("B02", "B03", "B04", "B08")


def _bands(item: str) -> np.ndarray:
    out = []
    for name in FILES:
        with rasterio.open(BUNDLED_CATALOG / item / f"{name}.tif") as src:
            out.append(src.read(1))
    return np.stack(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    mean, std = [500.0, 700.0, 500.0, 3000.0], [300.0, 300.0, 300.0, 900.0]
    model = build_model(4, 5, 8, mean, std, [(3, 2), (1, 3)]).eval()
    save_file(model.state_dict(), str(folder / MODEL_WEIGHTS_NAME))
    config = {
        "format": MODEL_FORMAT,
        "architecture": {
            "name": ARCHITECTURE, "depth": DEPTH, "in_channels": 4, "num_classes": 5,
            "base_channels": 8, "index_pairs": [[3, 2], [1, 3]],
        },
        "band_mean": mean, "band_std": std, "bands": ["blue", "green", "red", "nir"],
        "classes": ["vegetation", "bare", "water", "cloud", "shadow"],
        "weights": MODEL_WEIGHTS_NAME,
    }  # fmt: skip
    (folder / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    sample = _bands("S2B_33TWL_20230813_0_L2A")[None, :, :64, :64]
    export_onnx(folder, folder / "model.onnx", sample)
    return folder


def test_int8_model_has_qdq_convs_and_predicts_like_fp32(exported: Path) -> None:
    train = _bands("S2B_33TWL_20230813_0_L2A")
    chips = np.stack([train[:, r : r + 64, c : c + 64] for r in (0, 200, 400) for c in (0, 300)])
    info = quantize_int8(exported / "model.onnx", exported / INT8_MODEL_NAME, chips)
    assert info["format"] == "QDQ" and info["calibration_chips"] == len(chips)
    nodes = onnx.load(str(exported / INT8_MODEL_NAME)).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("Conv")
    # a ReLU after a convolution vanishes into its uint8 range (those after the decoders' float
    # sums stay); max-pooling reads int8 too
    producer = {out: n.op_type for n in nodes for out in n.output}
    assert ops.count("Conv") > 0 and ops.count("Relu") <= DEPTH
    assert all(producer[n.input[0]] == "Add" for n in nodes if n.op_type == "Relu")
    assert all(producer[n.input[0]] == "DequantizeLinear" for n in nodes if n.op_type == "MaxPool")
    # the normalisation and the index ratios stay float: raw DN is never quantized
    float_ops = ("Slice", "Sub", "Div")
    assert all(producer.get(i) != "DequantizeLinear" for n in nodes if n.op_type in float_ops
               for i in n.input)  # fmt: skip
    assert all(n.input[0] != INPUT_NAME for n in nodes if n.op_type == "QuantizeLinear")

    test = _bands("S2A_33TWM_20230815_0_L2A")[None, :, :128, :128].astype(np.float32)
    fp32 = open_session(exported / "model.onnx", 1, prefer_gpu=False)
    int8 = open_session(exported / INT8_MODEL_NAME, 1, prefer_gpu=False)
    a = fp32.run([OUTPUT_NAME], {INPUT_NAME: test})[0].argmax(1)
    b = int8.run([OUTPUT_NAME], {INPUT_NAME: test})[0].argmax(1)
    assert (a == b).mean() > 0.95

    item = {"assets": {"model": {"href": "model.onnx", "roles": ["mlm:model"]}}}
    described = with_int8_asset(item, info)["assets"]["model-int8"]
    assert described["href"] == INT8_MODEL_NAME and described["roles"] == ["mlm:model"]
    assert described["file:checksum"] == "1220" + info["sha256"]


def test_bad_calibration_is_named_and_writes_nothing(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="calibration needs training chips"):
        quantize_int8(exported / "model.onnx", tmp_path / "q.onnx", np.zeros((0, 4, 8, 8)))
    assert not (tmp_path / "q.onnx").exists()


def test_precision_is_fp32_or_int8() -> None:
    assert InferSpec().precision == "fp32"
    assert InferSpec(precision="int8").precision == "int8"
    with pytest.raises(ValueError, match="fp32"):
        InferSpec(precision="fp16")  # type: ignore[arg-type]


def test_precision_keeps_fp32_cache_keys_and_changes_int8_ones() -> None:
    assert "precision" not in InferSpec()._fingerprint_data(), "fp32 keys stay as before"
    assert InferSpec().fingerprint() != InferSpec(precision="int8").fingerprint()
