"""Window inference through PyTorch, for machines with a CUDA GPU but no onnxruntime-gpu.

eoforge installs the CPU build of ONNX Runtime; its CUDA build (``onnxruntime-gpu``) is a
separate, large install tied to one CUDA/cuDNN pair. PyTorch with CUDA is what most GPU
machines already have. :class:`TorchSession` runs the trained model (``model.safetensors``, the
same weights the ONNX file was exported from) and looks to
:func:`eoforge.inference.predict.predict_raster` like an ONNX Runtime session with IO binding:
(:func:`eoforge.export.torch_session.open_torch_session` opens one for a model directory)
the same windows, blending, nodata handling, streaming and pipelining (ADR 0008) apply, so the
class maps match the ONNX path's up to floating-point rounding (and bf16 rounding with
``amp=True``).

Each batch is copied into a pinned host buffer, sent to the device asynchronously, run under
``torch.inference_mode`` (optionally bf16 autocast, channels-last), and its logits come back as
float32 into the buffer the predictor bound. On a GPU (``blend_on_device``) the predictor keeps
the whole blend on the device instead (:mod:`eoforge.inference.device_blend`): only the input
strips go up and finished class rows come back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from eoforge.compute.cpus import cpu_limit
from eoforge.errors import InputError
from eoforge.inference.binding import Arg as _Arg
from eoforge.inference.binding import Binding as _Binding
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME

__all__ = ["TORCH_CPU", "TORCH_CUDA", "TorchSession"]

#: What :meth:`TorchSession.get_providers` names (the predictor pipelines any non-CPU one).
TORCH_CUDA = "TorchCUDA"
TORCH_CPU = "CPUExecutionProvider"


class TorchSession:
    """A trained eoforge model on a torch device, run like an ONNX Runtime session.

    Args:
        model: the network (raw-DN ``(N, bands, H, W)`` float32 in, logits out), e.g. from
            :func:`eoforge.training.files.load_model`.
        device: where to run it (``cuda`` or ``cpu``).
        amp: run the forward pass under bf16 autocast (CUDA only); logits come back float32.
        channels_last: keep activations in NHWC (faster cuDNN convolutions on tensor cores).
        in_channels: the bands the model takes (checked against scenes; None: not checked).
        blend_on_device: hold the predictor's blend on ``device`` too
            (:mod:`eoforge.inference.device_blend`; None: on a CUDA device only, where the
            host's blending would otherwise set the speed).
        threads: torch's intra-op threads while this session runs on the CPU (None: the CPUs
            a cgroup quota or affinity mask leaves this process,
            :func:`eoforge.compute.cpus.cpu_limit`, else torch's own default, one per physical
            core, as for the ONNX Runtime and OpenVINO sessions). torch's count is global to
            the process, so it is set for each run and put back after it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        amp: bool = False,
        channels_last: bool = True,
        in_channels: int | None = None,
        blend_on_device: bool | None = None,
        threads: int | None = None,
    ) -> None:
        if amp and device.type != "cuda":
            raise InputError(f"amp=True needs a CUDA device; this session is on {device}.")
        if threads is not None and threads < 1:
            raise InputError(f"threads={threads} must be >= 1 (or None for the CPU limit).")
        self.threads = (threads or cpu_limit()) if device.type == "cpu" else None
        self.device = device
        self.amp = amp
        self.channels_last = channels_last and device.type == "cuda"
        self.model = model.eval().to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.in_channels = in_channels
        self.blend_on_device = device.type == "cuda" if blend_on_device is None else blend_on_device
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self._lock = threading.Lock()  # two runners may call from the worker and the caller
        self.batches = 0

    # -- the onnxruntime.InferenceSession surface the predictor uses -----------------------

    def get_inputs(self) -> list[_Arg]:
        return [_Arg(INPUT_NAME, "tensor(float)", ["N", self.in_channels, "H", "W"])]

    def get_outputs(self) -> list[_Arg]:
        return [_Arg(OUTPUT_NAME, "tensor(float)", ["N", "K", "H", "W"])]

    def get_providers(self) -> list[str]:
        return [TORCH_CUDA if self.device.type == "cuda" else TORCH_CPU]

    def io_binding(self) -> _Binding:
        return _Binding("TorchSession")

    def run_with_iobinding(self, binding: _Binding) -> None:
        if binding.input is None:
            raise InputError(f"no '{INPUT_NAME}' bound before run_with_iobinding.")
        with self._lock, torch.inference_mode():
            out = self._forward(binding.input)
            if binding.output is not None:
                if binding.output.shape != tuple(out.shape):
                    raise InputError(
                        f"the bound output has shape {binding.output.shape}; the model returned "
                        f"{tuple(out.shape)}."
                    )
                torch.from_numpy(binding.output).copy_(out)  # straight into the caller's buffer
                binding.result = binding.output
            else:
                binding.result = out.cpu().numpy()

    def run(
        self, output_names: list[str] | None, feeds: dict[str, npt.NDArray[Any]]
    ) -> list[npt.NDArray[np.float32]]:
        """``session.run``: logits of ``feeds['image']``."""
        if INPUT_NAME not in feeds:
            raise InputError(f"feeds {sorted(feeds)} lack '{INPUT_NAME}'.")
        return [self.logits(np.asarray(feeds[INPUT_NAME], np.float32))]

    # -- the work ---------------------------------------------------------------------------

    def logits(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Float32 logits ``(N, K, H, W)`` of a raw-DN batch ``(N, bands, H, W)``."""
        with self._lock, torch.inference_mode():
            result: npt.NDArray[np.float32] = self._forward(batch).cpu().numpy()
        return result

    def _forward(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        """The model's float32 logits of ``batch``, on the device (lock held by the caller)."""
        if batch.ndim != 4:
            raise InputError(f"a batch must be (N, bands, H, W), got shape {batch.shape}.")
        return self._run_model(self._to_device(batch))

    def forward_on_device(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a float32 batch already on :attr:`device` (no host copies; the
        device blend of :mod:`eoforge.inference.device_blend`)."""
        with self._lock, torch.inference_mode():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self._run_model(x)

    def _run_model(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a device batch (layout set), under autocast if asked: float32."""
        with self._cpu_threads(), torch.autocast("cuda", torch.bfloat16, enabled=self.amp):
            out: torch.Tensor = self.model(x)
        self.batches += 1
        return out.float()

    @contextmanager
    def _cpu_threads(self) -> Iterator[None]:
        """torch's intra-op threads at :attr:`threads` for one run (lock held by the caller)."""
        previous = torch.get_num_threads()
        if self.threads is None or previous == self.threads:
            yield
            return
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _to_device(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        if self.device.type != "cuda":
            return host
        pinned = self._pinned.get(batch.shape)
        if pinned is None:
            pinned = self._pinned[batch.shape] = torch.empty(
                batch.shape, dtype=torch.float32, pin_memory=True
            )
        pinned.copy_(host)
        x = pinned.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
