"""A trained model directory opened for inference through PyTorch (no ONNX file needed).

:class:`eoforge.inference.torch_session.TorchSession` is the session; this module only loads
the model directory (the training wing's files), which the inference wing may not import.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eoforge.errors import InputError
from eoforge.inference.torch_session import TorchSession
from eoforge.training.files import load_model, read_model_config

__all__ = ["open_torch_session"]


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
