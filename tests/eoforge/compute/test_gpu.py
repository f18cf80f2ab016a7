"""Tests of eoforge.compute.gpu: CPU fallbacks that always run, and the CUDA paths (``requires_gpu``)."""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import zarr
from onnx import TensorProto, helper, numpy_helper

from eoforge.compute import gpu
from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.predict import predict_scene
from eoforge.inference.session import open_session


def chip_store(path: Path, n: int = 6, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(1, 6000, (n, 4, size, size), dtype=np.uint16)
    y = rng.integers(0, 5, (n, size, size), dtype=np.uint8)
    y[0, 0, 0] = 255
    root = zarr.open_group(str(path), mode="w")
    split = root.create_group("train")
    split.create_array("x", shape=x.shape, dtype=x.dtype, chunks=(1, 4, size, size))[...] = x
    split.create_array("y", shape=y.shape, dtype=y.dtype, chunks=(1, size, size))[...] = y
    return x, y


def conv_onnx(path: Path) -> Path:
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 4, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        numpy_helper.from_array(np.array(1e4, np.float32), "s"),
    ]
    nodes = [
        helper.make_node("Div", ["image", "s"], ["x"]),
        helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu.DISABLE_ENV, "1")


# --------------------------------------------------------------------------- CPU fallbacks


@pytest.mark.usefixtures("no_gpu_env")
def test_disabled_gpu_means_cpu_everywhere() -> None:
    assert gpu.cuda_device_count() == 0 and not gpu.cuda_available()
    assert not gpu.ort_cuda_available()
    assert gpu.ort_providers() == ["CPUExecutionProvider"]
    assert gpu.torch_device() == torch.device("cpu")
    assert gpu.chip_read_route() == "cpu"


def test_empty_cuda_visible_devices_hides_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_nvml_device_count", lambda: 2)
    monkeypatch.delenv(gpu.DISABLE_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.cuda_device_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu.cuda_device_count() == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu.cuda_device_count() == 2


def test_ort_providers_put_cuda_first_only_with_build_and_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(gpu.DISABLE_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cuda_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(gpu.ort, "get_available_providers", lambda: cuda_build)
    monkeypatch.setattr(gpu, "_nvml_device_count", lambda: 1)
    providers = gpu.ort_providers(device_id=0)
    assert providers[0][0] == gpu.CUDA_PROVIDER and providers[0][1]["device_id"] == "0"
    assert providers[-1] == "CPUExecutionProvider"
    assert gpu.ort_providers(prefer_gpu=False) == ["CPUExecutionProvider"]
    monkeypatch.setattr(gpu, "_nvml_device_count", lambda: 0)  # onnxruntime-gpu, no device
    assert gpu.ort_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(gpu.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(gpu, "_nvml_device_count", lambda: 1)  # a device, CPU-only build
    assert gpu.ort_providers() == ["CPUExecutionProvider"]


def test_chip_route_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    installed: set[str] = {"cupy", "kvikio"}
    monkeypatch.setattr(gpu, "_has", lambda name: name in installed)
    assert gpu.chip_read_route() == "kvikio"
    installed.discard("kvikio")
    assert gpu.chip_read_route() == "cupy"
    installed.clear()
    assert gpu.chip_read_route() == ("torch" if torch.cuda.is_available() else "cpu")
    assert gpu.chip_read_route(prefer_gpu=False) == "cpu"


def test_session_runs_on_cpu_without_gpu(tmp_path: Path) -> None:
    session = open_session(conv_onnx(tmp_path / "m.onnx"), threads=1)
    if not gpu.ort_cuda_available():
        assert session.get_providers() == ["CPUExecutionProvider"]
    pred = predict_scene(
        session, np.full((4, 40, 40), 100, np.uint16), InferSpec(window=32, overlap=8)
    )
    assert pred.shape == (40, 40)


def test_read_chips_cpu_fallback(tmp_path: Path) -> None:
    x, y = chip_store(tmp_path / "chips.zarr")
    chips = gpu.read_chips_to_gpu(tmp_path / "chips.zarr", "train", prefer_gpu=False)
    assert chips.route == "cpu" and chips.x.device.type == "cpu"
    assert chips.x.dtype == torch.float32 and chips.y.dtype == torch.int64
    np.testing.assert_array_equal(chips.x.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(chips.y.numpy(), y.astype(np.int64))
    some = gpu.read_chips_to_gpu(tmp_path / "chips.zarr", "train", [4, 1], prefer_gpu=False)
    np.testing.assert_array_equal(some.x.numpy(), x[[4, 1]].astype(np.float32))
    np.testing.assert_array_equal(some.y.numpy(), y[[4, 1]])
    with pytest.raises(InputError, match=r"0\.\.5"):
        gpu.read_chips_to_gpu(tmp_path / "chips.zarr", "train", [6], prefer_gpu=False)
    with pytest.raises(InputError, match="does not exist"):
        gpu.read_chips_to_gpu(tmp_path / "chips.zarr", "val", prefer_gpu=False)


def test_amp_is_off_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert gpu.amp_dtype(cpu) is None
    assert isinstance(gpu.amp_autocast(cpu), contextlib.nullcontext)
    assert not gpu.grad_scaler(cpu).is_enabled()


# --------------------------------------------------------------------------- CUDA paths


@pytest.mark.requires_gpu
def test_gpu_is_seen_by_nvml_and_torch() -> None:
    assert gpu.cuda_device_count() >= 1
    assert torch.cuda.is_available(), "NVML sees a GPU but torch does not: a CPU-only torch?"
    assert gpu.torch_device().type == "cuda"


@pytest.mark.requires_gpu
def test_ort_cuda_session_matches_cpu(tmp_path: Path) -> None:
    if gpu.CUDA_PROVIDER not in ort.get_available_providers():
        pytest.skip("requires_gpu: onnxruntime-gpu is not installed (pip install .[gpu])")
    path = conv_onnx(tmp_path / "m.onnx")
    session = open_session(path)
    assert session.get_providers()[0] == gpu.CUDA_PROVIDER
    bands = np.random.default_rng(0).integers(1, 6000, (4, 300, 517), dtype=np.uint16)
    spec = InferSpec(window=64, overlap=16, batch_size=4)
    on_gpu = predict_scene(session, bands, spec)
    on_cpu = predict_scene(open_session(path, prefer_gpu=False), bands, spec)
    assert (on_gpu == on_cpu).mean() > 0.999  # cuDNN may round near-ties differently


@pytest.mark.requires_gpu
def test_read_chips_into_gpu_memory(tmp_path: Path) -> None:
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("requires_gpu: cupy is not installed (pip install .[gpu])")
    x, y = chip_store(tmp_path / "chips.zarr")
    chips = gpu.read_chips_to_gpu(tmp_path / "chips.zarr", "train", [3, 0, 5])
    assert chips.route in ("kvikio", "cupy")
    assert chips.x.is_cuda and chips.y.is_cuda
    np.testing.assert_array_equal(chips.x.cpu().numpy(), x[[3, 0, 5]].astype(np.float32))
    np.testing.assert_array_equal(chips.y.cpu().numpy(), y[[3, 0, 5]])


@pytest.mark.requires_gpu
def test_amp_autocast_on_cuda() -> None:
    device = torch.device("cuda")
    dtype = gpu.amp_dtype(device)
    assert dtype in (torch.bfloat16, torch.float16)
    conv = torch.nn.Conv2d(4, 8, 3).to(device)
    with gpu.amp_autocast(device):
        out: Any = conv(torch.ones(1, 4, 16, 16, device=device))
    assert out.dtype == dtype
    assert gpu.grad_scaler(device).is_enabled() == (dtype == torch.float16)
