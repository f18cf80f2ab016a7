"""Tests of eoforge.inference.torch_session: the trained model run through torch by the same
predictor as ONNX Runtime (CPU always; CUDA and bf16 under ``requires_gpu``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from eoforge_test_helpers import (  # type: ignore[import-not-found]
    noisy_scene,
    tiny_exported_model,
)
from pydantic import ValidationError

from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.export.torch_session import choose_backend, open_predictor, open_torch_session
from eoforge.inference.predict import predict_raster, predict_scene
from eoforge.inference.scene_io import ArrayReader
from eoforge.inference.session import open_session
from eoforge.inference.torch_session import TORCH_CUDA, TorchSession


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(
        tiny_exported_model(tmp_path_factory.mktemp("chips"), tmp_path_factory.mktemp("model"))
    )


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return np.asarray(noisy_scene())


SPEC = InferSpec(window=64, overlap=16, batch_size=3)


def test_torch_cpu_matches_onnx_runtime(model_dir: Path, scene: np.ndarray) -> None:
    torch_map = predict_scene(open_torch_session(model_dir, "cpu"), scene, SPEC)
    ort_map = predict_scene(open_session(model_dir / "model.onnx", threads=1), scene, SPEC)
    assert torch_map.shape == ort_map.shape == scene.shape[1:]
    assert (torch_map == ort_map).mean() > 0.999  # float rounding near ties only
    assert (torch_map[:20, :40] == 255).all()  # nodata handled by the predictor, as for ORT


def test_torch_cpu_pipelined_is_bitwise_serial(model_dir: Path, scene: np.ndarray) -> None:
    session = open_torch_session(model_dir, "cpu")
    assert session.get_providers() == ["CPUExecutionProvider"]  # not pipelined by default
    serial = predict_scene(session, scene, SPEC.model_copy(update={"pipelined": False}))
    piped = predict_scene(session, scene, SPEC.model_copy(update={"pipelined": True}))
    np.testing.assert_array_equal(serial, piped)


class _Rows:
    """A writer keeping rows (class or uncertainty) by their top row."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def write_rows(self, top: int, rows: np.ndarray) -> None:
        self.rows[top] = rows.copy()

    def stacked(self) -> np.ndarray:
        return np.concatenate([self.rows[t] for t in sorted(self.rows)], axis=-2)


@pytest.mark.parametrize("spec", [SPEC, InferSpec(window=256, overlap=64, batch_size=2)])
def test_blend_held_on_the_device_matches_the_host(
    model_dir: Path, scene: np.ndarray, spec: InferSpec
) -> None:
    host = open_torch_session(model_dir, "cpu")
    assert not host.blend_on_device  # the CPU default: the host blends
    on_device = TorchSession(host.model, torch.device("cpu"), in_channels=4, blend_on_device=True)
    # the GPU's path (strip, accumulator and argmax in torch), exercised on the CPU
    results = []
    for session in (host, on_device):
        classes, unc = _Rows(), _Rows()
        stats = predict_raster(session, ArrayReader(scene), spec, classes, uncertainty=unc)
        results.append((classes.stacked(), unc.stacked(), stats))
    (host_map, host_unc, host_stats), (dev_map, dev_unc, dev_stats) = results
    assert dev_map.shape == scene.shape[1:]
    assert (dev_map == host_map).mean() > 0.999  # float rounding near ties only
    np.testing.assert_array_equal(dev_map == 255, host_map == 255)  # same nodata
    assert np.abs(dev_unc.astype(int) - host_unc.astype(int)).max() <= 1
    assert dev_stats.windows_run == host_stats.windows_run
    assert dev_stats.windows_skipped == host_stats.windows_skipped
    assert dev_stats.window_pixels == host_stats.window_pixels
    assert dev_stats.model_seconds is None  # asynchronous on the device: not measured
    assert dev_stats.max_buffered_rows <= 4 * max(spec.window, 64)  # bounded by the window


def test_device_blend_refuses_non_finite_logits(model_dir: Path, scene: np.ndarray) -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((x.shape[0], 3, *x.shape[2:]))
            out[:, 1, 5, 5] = float("nan")
            return out

    session = TorchSession(Broken(), torch.device("cpu"), in_channels=4, blend_on_device=True)
    with pytest.raises(InputError, match="non-finite"):
        predict_scene(session, scene, SPEC)


def test_scene_with_other_bands_is_refused(model_dir: Path, scene: np.ndarray) -> None:
    with pytest.raises(InputError, match="expects 4 input bands but the scene has 3"):
        predict_scene(open_torch_session(model_dir, "cpu"), scene[:3], SPEC)


def test_session_run_and_bad_feeds(model_dir: Path) -> None:
    session = open_torch_session(model_dir, "cpu")
    x = np.full((2, 4, 32, 32), 1000, np.float32)
    (logits,) = session.run(None, {"image": x})
    assert logits.dtype == np.float32 and logits.shape[0] == 2 and logits.shape[2:] == (32, 32)
    with pytest.raises(InputError, match="lack 'image'"):
        session.run(None, {"x": x})
    with pytest.raises(InputError, match=r"\(N, bands, H, W\)"):
        session.logits(x[0])


def test_amp_and_cuda_are_refused_without_a_gpu(model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(InputError, match="sees no CUDA GPU"):
        open_torch_session(model_dir, "cuda")
    with pytest.raises(InputError, match="amp=True needs a CUDA device"):
        TorchSession(torch.nn.Identity(), torch.device("cpu"), amp=True)


@pytest.mark.requires_gpu
def test_cuda_session_matches_cpu_and_pipelines(model_dir: Path, scene: np.ndarray) -> None:
    if not torch.cuda.is_available():
        pytest.skip("requires_gpu: torch is a CPU-only build here")
    cpu_map = predict_scene(open_torch_session(model_dir, "cpu"), scene, SPEC)
    cuda = open_torch_session(model_dir, "cuda")
    assert cuda.get_providers() == [TORCH_CUDA]
    piped = predict_scene(cuda, scene, SPEC)  # pipelined by default on a GPU session
    serial = predict_scene(cuda, scene, SPEC.model_copy(update={"pipelined": False}))
    np.testing.assert_array_equal(piped, serial)
    assert (piped == cpu_map).mean() > 0.999  # cuDNN/TF32 may round near-ties differently
    bf16 = predict_scene(open_torch_session(model_dir, "cuda", amp=True), scene, SPEC)
    assert (bf16 == cpu_map).mean() > 0.98
    assert next(cuda.model.parameters()).is_cuda


def test_backend_choice_and_opening(model_dir: Path) -> None:
    auto = InferSpec()
    assert "backend" not in auto._fingerprint_data()  # a late field: stored keys unchanged
    if not torch.cuda.is_available():
        assert choose_backend(auto) == "openvino"  # the CPU runs OpenVINO (ADR 0012)
    torch_spec = InferSpec(backend="torch")
    assert choose_backend(torch_spec) == "torch"
    assert choose_backend(InferSpec(backend="onnxruntime")) == "onnxruntime"
    session = open_predictor(model_dir / "model.onnx", torch_spec)
    assert isinstance(session, TorchSession)
    assert not isinstance(open_predictor(model_dir / "model.onnx", auto), TorchSession)
    with pytest.raises(InputError, match="precision int8 needs"):
        open_predictor(
            model_dir / "model.onnx", torch_spec.model_copy(update={"precision": "int8"})
        )


def test_torch_on_the_cpu_runs_on_the_threads_it_is_given(
    model_dir: Path, scene: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's threads follow ``infer.threads``, else the CPU quota (as ONNX Runtime's and
    OpenVINO's do), for each run only: the process's own count is put back after it."""
    session = open_predictor(model_dir / "model.onnx", InferSpec(backend="torch", threads=1))
    assert isinstance(session, TorchSession) and session.threads == 1
    seen: list[int] = []
    forward = session.model.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return forward(x)  # type: ignore[no-any-return]

    monkeypatch.setattr(session.model, "forward", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        classes = predict_scene(session, scene, SPEC)
        assert torch.get_num_threads() == 2  # put back
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    np.testing.assert_array_equal(
        classes, predict_scene(open_torch_session(model_dir, "cpu"), scene, SPEC)
    )
    # no threads asked for: the CPU limit (a quota, a mask or EOFORGE_CPUS), else torch's own
    monkeypatch.setattr("eoforge.inference.torch_session.cpu_limit", lambda: 3)
    assert open_torch_session(model_dir, "cpu").threads == 3
    monkeypatch.setattr("eoforge.inference.torch_session.cpu_limit", lambda: None)
    assert open_torch_session(model_dir, "cpu").threads is None
    with pytest.raises(InputError, match="threads=0"):
        open_torch_session(model_dir, "cpu", threads=0)


def test_torch_backend_needs_the_weights(model_dir: Path, tmp_path: Path) -> None:
    onnx_only = tmp_path / "model.onnx"
    onnx_only.write_bytes((model_dir / "model.onnx").read_bytes())
    with pytest.raises(InputError, match=r"model\.safetensors"):
        open_predictor(onnx_only, InferSpec(backend="torch"))
    with pytest.raises(ValidationError, match="backend"):
        InferSpec.model_validate({"backend": "tensorrt"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, auto asks torch")
def test_the_cpu_predictor_never_imports_torch(model_dir: Path) -> None:
    """On a CPU the default predictor (OpenVINO or ONNX Runtime) opens, runs and names its
    runtime without importing torch (about a second per `eoforge predict` and per event run)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from eoforge.config import InferSpec\n"
        "from eoforge.export.torch_session import open_predictor, runtime_of\n"
        "from eoforge.inference.predict import predict_scene\n"
        "import eoforge.runs.stages_model, eoforge.runs.scenes\n"
        f"s = open_predictor({str(model_dir / 'model.onnx')!r}, InferSpec())\n"
        "classes = predict_scene(s, np.full((4, 64, 64), 900, np.uint16), InferSpec(window=64))\n"
        "print(runtime_of(s), classes.shape, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip().endswith("(64, 64) False"), out
