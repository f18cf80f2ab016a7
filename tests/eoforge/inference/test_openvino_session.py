"""Tests of eoforge.inference.openvino_session: the exported model run by OpenVINO's CPU plugin
through the same predictor as ONNX Runtime, fp32 and int8, and the backend choice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from eoforge_test_helpers import (  # type: ignore[import-not-found]
    noisy_scene,
    tiny_exported_model,
)
from onnx import TensorProto, helper

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.export.quantize import INT8_MODEL_NAME, quantize_int8
from eoforge.export.torch_session import choose_backend, open_predictor
from eoforge.inference.openvino_session import OPENVINO_CPU, OpenVINOSession
from eoforge.inference.predict import predict_scene
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME, open_session

SPEC = InferSpec(window=64, overlap=16, batch_size=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(
        tiny_exported_model(tmp_path_factory.mktemp("chips"), tmp_path_factory.mktemp("model"))
    )
    chips = np.random.default_rng(0).integers(200, 5000, (8, 4, 32, 32)).astype(np.float32)
    quantize_int8(folder / "model.onnx", folder / INT8_MODEL_NAME, chips)
    return folder


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return np.asarray(noisy_scene())


@pytest.mark.parametrize("name", ["model.onnx", INT8_MODEL_NAME])
def test_openvino_matches_onnx_runtime(model_dir: Path, scene: np.ndarray, name: str) -> None:
    session = OpenVINOSession(model_dir / name, threads=1)
    assert session.get_providers() == [OPENVINO_CPU]  # a CPU runtime: not pipelined
    ov_map = predict_scene(session, scene, SPEC)
    ort_map = predict_scene(open_session(model_dir / name, threads=1), scene, SPEC)
    assert ov_map.shape == ort_map.shape == scene.shape[1:]
    # fp32: float rounding near ties only; int8: the two runtimes round requantization alike
    assert (ov_map == ort_map).mean() > (0.999 if name == "model.onnx" else 0.99)
    assert (ov_map[:20, :40] == 255).all()  # nodata handled by the predictor


def test_compiled_once_per_shape_and_buffers_never_reused(
    model_dir: Path, scene: np.ndarray
) -> None:
    session = OpenVINOSession(model_dir / "model.onnx", threads=1)
    first = predict_scene(session, scene, SPEC)
    compiled = session.compilations
    assert 1 <= compiled <= 2  # full batches, and a shorter last one
    # a second scene binds new buffers: the request must not write into the freed ones
    for _ in range(3):
        np.testing.assert_array_equal(predict_scene(session, scene, SPEC), first)
    assert session.compilations == compiled
    piped = predict_scene(session, scene, SPEC.model_copy(update={"pipelined": True}))
    np.testing.assert_array_equal(piped, first)


def test_session_run_and_bad_feeds(model_dir: Path) -> None:
    session = OpenVINOSession(model_dir / "model.onnx")
    x = np.full((2, 4, 32, 32), 1000, np.float32)
    (logits,) = session.run(None, {INPUT_NAME: x})
    ref = open_session(model_dir / "model.onnx", 1).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    np.testing.assert_allclose(logits, ref, atol=1e-3)
    assert session.get_inputs()[0].shape == ["?", 4, "?", "?"]
    with pytest.raises(InputError, match="lack 'image'"):
        session.run(None, {"x": x})
    with pytest.raises(InputError, match=r"\(N, bands, H, W\)"):
        session.run(None, {INPUT_NAME: x[0]})
    with pytest.raises(InputError, match="batch of shape"):
        session.run(None, {INPUT_NAME: x[:, :3]})  # the model takes 4 bands


def test_unusable_models_are_named(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        OpenVINOSession(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"garbage\.onnx.*cannot be loaded"):
        OpenVINOSession(garbage)
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 4, "H", "W"])
    logits = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 5, "H", "W"])
    unknown = helper.make_node("Frobnicate", [INPUT_NAME], [OUTPUT_NAME], domain="com.example")
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    graph = helper.make_graph([unknown], "g", [image], [logits])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(tmp_path / "custom.onnx"))
    with pytest.raises(
        InputError, match=r"(?s)custom\.onnx.*cannot be read by OpenVINO.*onnxruntime"
    ):
        OpenVINOSession(tmp_path / "custom.onnx")
    # auto falls back to ONNX Runtime, whose own error names what it cannot load either
    with pytest.raises(InputError, match=r"(?s)custom\.onnx.*cannot be loaded by onnxruntime"):
        open_predictor(tmp_path / "custom.onnx", InferSpec())
    renamed = onnx.load(str(model_dir / "model.onnx"))
    renamed.graph.input[0].name = "x"
    for node in renamed.graph.node:
        node.input[:] = ["x" if i == INPUT_NAME else i for i in node.input]
    onnx.save(renamed, str(tmp_path / "renamed.onnx"))
    with pytest.raises(InputError, match="needs input 'image'"):
        OpenVINOSession(tmp_path / "renamed.onnx")
    with pytest.raises(InputError, match="threads=0"):
        OpenVINOSession(model_dir / "model.onnx", threads=0)


def test_auto_is_openvino_on_the_cpu(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert choose_backend(InferSpec()) == "openvino"
    assert choose_backend(InferSpec(precision="int8")) == "openvino"
    assert isinstance(open_predictor(model_dir / "model.onnx", InferSpec()), OpenVINOSession)
    # without the package, auto falls back to ONNX Runtime and an explicit choice is refused
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert choose_backend(InferSpec()) == "onnxruntime"
    with pytest.raises(InputError, match="'openvino' package is not installed"):
        open_predictor(model_dir / "model.onnx", InferSpec(backend="openvino"))
