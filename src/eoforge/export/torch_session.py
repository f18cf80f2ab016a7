"""A trained model directory opened for inference through PyTorch (no ONNX file needed).

:class:`eoforge.inference.torch_session.TorchSession` is the session; this module only loads
the model directory (the training wing's files), which the inference wing may not import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from eoforge.compute import gpu
from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.session import open_session
from eoforge.inference.torch_session import TorchSession
from eoforge.training.files import load_model, read_model_config

__all__ = ["choose_backend", "open_predictor", "open_torch_session"]


def open_torch_session(
    model_dir: Path,
    device: str | torch.device | None = None,
    *,
    amp: bool = False,
    channels_last: bool = True,
) -> TorchSession:
    """A :class:`TorchSession` for the trained model in ``model_dir``.

    Args:
        model_dir: a model directory written by :func:`eoforge.training.train.train_model`.
        device: ``cuda``, ``cpu`` or None (CUDA when torch can use it, else the CPU).
        amp: bf16 autocast on CUDA.
        channels_last: NHWC activations on CUDA.

    Raises:
        InputError: the model directory is unusable, or ``cuda`` was asked for and torch
            cannot use a GPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device '{device}' was asked for but this torch ({torch.__version__}) sees no CUDA "
            "GPU; use device 'cpu' or the ONNX session."
        )
    model = load_model(Path(model_dir))
    in_channels = int(read_model_config(Path(model_dir))["architecture"]["in_channels"])
    return TorchSession(model, dev, amp=amp, channels_last=channels_last, in_channels=in_channels)


def choose_backend(spec: InferSpec) -> Literal["onnxruntime", "torch"]:
    """What ``spec.backend`` means on this machine (see :class:`~eoforge.config.InferSpec`)."""
    if spec.backend != "auto":
        return spec.backend
    on_gpu = spec.precision == "fp32" and gpu.torch_device().type == "cuda"
    return "torch" if on_gpu and not gpu.ort_cuda_available() else "onnxruntime"


def open_predictor(onnx_path: Path, spec: InferSpec) -> Any:
    """The session that runs ``onnx_path``'s model for ``spec``: ONNX Runtime on that file, or
    torch on the weights beside it (``model.safetensors``), per :func:`choose_backend`.

    Raises:
        InputError: the file (or, for torch, the model directory) is unusable, or torch was
            asked for with ``precision: int8``.
    """
    path = Path(onnx_path)
    backend = choose_backend(spec)
    if backend == "onnxruntime":
        return open_session(path, spec.threads)
    if spec.precision != "fp32":
        raise InputError(
            f"infer.backend torch runs the fp32 weights; infer.precision {spec.precision} needs "
            "ONNX Runtime (backend onnxruntime or auto)."
        )
    if not (path.parent / "model.safetensors").is_file():
        raise InputError(
            f"infer.backend torch needs the trained weights 'model.safetensors' beside '{path}'; "
            "use backend onnxruntime for a model shipped as ONNX only."
        )
    return open_torch_session(path.parent, None, amp=False)
