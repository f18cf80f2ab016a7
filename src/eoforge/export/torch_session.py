"""A trained model directory opened for inference through PyTorch (no ONNX file needed).

:class:`eoforge.inference.torch_session.TorchSession` is the session; this module only loads
the model directory (the training wing's files), which the inference wing may not import.

torch is imported only when the torch backend is chosen: on a CPU, where OpenVINO or ONNX
Runtime runs the model, importing it would add about a second to every ``eoforge predict`` and
every event-driven run (measured 1.06 s on the 2-core CI machine).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from eoforge.compute import gpu
from eoforge.config import InferSpec
from eoforge.errors import InputError
from eoforge.inference.openvino_session import OpenVINOSession, openvino_available
from eoforge.inference.session import open_session

if TYPE_CHECKING:
    import torch

    from eoforge.inference.torch_session import TorchSession

__all__ = ["choose_backend", "open_predictor", "open_torch_session", "runtime_of"]

log = logging.getLogger(__name__)


def open_torch_session(
    model_dir: Path,
    device: str | torch.device | None = None,
    *,
    amp: bool = False,
    channels_last: bool = True,
    threads: int | None = None,
) -> TorchSession:
    """A :class:`TorchSession` for the trained model in ``model_dir``.

    Args:
        model_dir: a model directory written by :func:`eoforge.training.train.train_model`.
        device: ``cuda``, ``cpu`` or None (CUDA when torch can use it, else the CPU).
        amp: bf16 autocast on CUDA.
        channels_last: NHWC activations on CUDA.
        threads: torch's threads on the CPU (None: the CPU quota's, see :class:`TorchSession`).

    Raises:
        InputError: the model directory is unusable, or ``cuda`` was asked for and torch
            cannot use a GPU.
    """
    import torch

    from eoforge.inference.torch_session import TorchSession
    from eoforge.training.files import load_model, read_model_config

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
    return TorchSession(
        model,
        dev,
        amp=amp,
        channels_last=channels_last,
        in_channels=in_channels,
        threads=threads,
    )


Backend = Literal["onnxruntime", "openvino", "torch"]


def choose_backend(spec: InferSpec) -> Backend:
    """What ``spec.backend`` means on this machine (see :class:`~eoforge.config.InferSpec`):
    auto is ONNX Runtime on a CUDA GPU it can use, torch on a CUDA GPU it cannot (fp32), and
    OpenVINO on the CPU (ONNX Runtime where ``openvino`` is not installed)."""
    if spec.backend != "auto":
        return spec.backend
    # NVML answers without importing torch; only a machine with a GPU asks torch
    if gpu.cuda_available() and gpu.torch_device().type == "cuda":
        if gpu.ort_cuda_available():
            return "onnxruntime"
        if spec.precision == "fp32":
            return "torch"
    return "openvino" if openvino_available() else "onnxruntime"


def open_predictor(onnx_path: Path, spec: InferSpec) -> Any:
    """The session that runs ``onnx_path``'s model for ``spec``: ONNX Runtime or OpenVINO on
    that file, or torch on the weights beside it (``model.safetensors``), per
    :func:`choose_backend`.

    Raises:
        InputError: the file (or, for torch, the model directory) is unusable, or torch was
            asked for with ``precision: int8``.
    """
    path = Path(onnx_path)
    backend = choose_backend(spec)
    if backend == "onnxruntime":
        return open_session(path, spec.threads)
    if backend == "openvino":
        if not openvino_available():
            raise InputError(
                f"infer.backend openvino for '{path}', but the 'openvino' package is not "
                "installed: pip install openvino, or use backend onnxruntime / auto."
            )
        try:
            return OpenVINOSession(path, spec.threads)
        except InputError as exc:
            if spec.backend != "auto":
                raise
            # a model OpenVINO cannot read (e.g. an operator it lacks) may still run in ORT
            log.warning("%s Running it with ONNX Runtime instead.", exc)
            return open_session(path, spec.threads)
    if spec.precision != "fp32":
        raise InputError(
            f"infer.backend torch runs the fp32 weights; infer.precision {spec.precision} needs "
            "ONNX Runtime or OpenVINO (backend onnxruntime, openvino or auto)."
        )
    if not (path.parent / "model.safetensors").is_file():
        raise InputError(
            f"infer.backend torch needs the trained weights 'model.safetensors' beside '{path}'; "
            "use backend onnxruntime for a model shipped as ONNX only."
        )
    return open_torch_session(path.parent, None, amp=False, threads=spec.threads)


def runtime_of(session: Any) -> str:
    """What runs a session from :func:`open_predictor`, with its version and device, for the
    prediction items (``eoforge:runtime``), e.g. ``openvino 2026.4.1 (CPU)``."""
    if isinstance(session, OpenVINOSession):
        import openvino

        return f"openvino {openvino.__version__.split('-')[0]} (CPU)"
    torch_sessions = sys.modules.get("eoforge.inference.torch_session")  # loaded if one exists
    if torch_sessions is not None and isinstance(session, torch_sessions.TorchSession):
        import torch

        return f"torch {torch.__version__} ({session.device.type})"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} ({session.get_providers()[0]})"
