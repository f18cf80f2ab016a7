"""ONNX Runtime sessions for window inference: options, loading with the ADR 0001 tensor
names checked, and a batch runner that binds preallocated buffers to the session.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from eoforge.compute.cpus import cpu_limit
from eoforge.compute.gpu import ort_providers
from eoforge.errors import InputError
from eoforge.inference.safety import check_onnx_external_data
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.inference.windows import _BlendPlan, _weighted_softmax_

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "open_session", "session_options"]

#: Names of the model's input and output tensors (ADR 0001).
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def session_options(threads: int | None = None, *, spinning: bool = False) -> ort.SessionOptions:
    """ONNX Runtime session options tuned for batched window inference.

    All graph optimisations (constant folding, Conv+BatchNorm+ReLU fusion, the CPU's blocked
    NCHWc layout), ``threads`` intra-op threads and a single inter-op thread (the graph is one
    sequential chain), the memory arena and memory-pattern planning on (windows have one shape,
    so buffers are planned once and reused), and no busy-waiting between operators by default:
    a spinning pool wins a little on an idle machine but steals cores from the reader, the
    writer and other workers on a shared one (``benchmarks/inference.py`` measures both).

    Args:
        threads: intra-op threads (None: the CPUs a cgroup quota or affinity mask leaves this
            process, :func:`eoforge.compute.cpus.cpu_limit`, else onnxruntime's default, one
            per physical core).
        spinning: let idle intra-op threads spin instead of sleeping.

    Returns:
        The options, ready for :class:`onnxruntime.InferenceSession`.

    Raises:
        InputError: ``threads`` is below 1.
    """
    if threads is not None and threads < 1:
        raise InputError(f"threads={threads} must be >= 1 (or None for all cores).")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or cpu_limit() or 0
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def open_session(
    onnx_path: Path,
    threads: int | None = None,
    *,
    prefer_gpu: bool = True,
    spinning: bool = False,
) -> ort.InferenceSession:
    """Open an exported model for inference.

    CUDA is used first when this onnxruntime build offers it and a GPU is present (see
    :func:`eoforge.compute.gpu.ort_providers`), the CPU otherwise. Options: :func:`session_options`.

    Args:
        onnx_path: the ``model.onnx`` written by the export stage.
        threads: intra-op threads (None: onnxruntime's default, all physical cores).
        prefer_gpu: use the CUDA execution provider when available.
        spinning: let idle intra-op threads busy-wait (see :func:`session_options`).

    Returns:
        The session; its input is ``image`` and its output ``logits`` (checked).

    Raises:
        InputError: the file is missing, is not a loadable ONNX model, or has other tensors.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"ONNX model '{path}' does not exist; run the export stage first.")
    if threads is not None and threads < 1:
        raise InputError(f"threads={threads} for '{path}' must be >= 1 (or None for all cores).")
    check_onnx_external_data(path)  # external tensors only from the model's own folder
    opts = session_options(threads, spinning=spinning)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=ort_providers(prefer_gpu)
        )
    except Exception as exc:  # onnxruntime's own error types derive from Exception only
        raise InputError(
            f"ONNX model '{path}' cannot be loaded by onnxruntime {ort.__version__}: {exc}; "
            "re-export the model."
        ) from exc
    _model_io(session, where=f"ONNX model '{path}'")
    return session


@dataclass(frozen=True)
class _ModelIO:
    """The static dimensions of a session's ``image`` input (None where dynamic)."""

    channels: int | None
    batch: int | None
    height: int | None
    width: int | None


def _model_io(session: Any, where: str) -> _ModelIO:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise InputError(
            f"{where} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; eoforge needs "
            f"input '{INPUT_NAME}' and output '{OUTPUT_NAME}' (ADR 0001): re-export the model."
        )
    image = inputs[INPUT_NAME]
    if image.type != "tensor(float)" or len(image.shape) != 4:
        raise InputError(
            f"{where}: input '{INPUT_NAME}' is {image.type} of shape {image.shape}; it must be "
            "float32 (N, bands, H, W) raw DN: re-export the model."
        )
    dims = [d if isinstance(d, int) and d > 0 else None for d in image.shape]
    return _ModelIO(channels=dims[1], batch=dims[0], height=dims[2], width=dims[3])


class _BatchRunner:
    """Runs batches of windows through a session with IO binding, and weighs their softmax
    probabilities for the blend (see :meth:`run`).

    The input batch lives in one preallocated float32 buffer (:attr:`stack`) bound to the
    session without a copy; after the first run the logits are written straight into a
    preallocated output buffer, so a batch allocates nothing. With the CUDA provider the same
    binding makes onnxruntime copy the batch to the device and the logits back once per run.
    """

    def __init__(
        self, session: Any, capacity: int, channels: int, height: int, width: int, fixed: bool
    ) -> None:
        self.session = session
        self.capacity = capacity
        self.fixed = fixed  # a static batch dimension: always run `capacity` windows
        self.stack = np.zeros((capacity, channels, height, width), np.float32)
        self.binding = session.io_binding()
        self.out: npt.NDArray[np.float32] | None = None
        self.batches = 0
        self.model_seconds = 0.0  # wall time of the session's runs (the model alone)

    def run(self, windows: Sequence[tuple[int, int]], plan: _BlendPlan) -> npt.NDArray[np.float32]:
        """Softmax probabilities times blend weights ``(n, K, h, w)`` of the first ``n =
        len(windows)`` windows in :attr:`stack` (a view), ``windows`` being their (row, column)
        indices in ``plan``.

        The weights are applied here, on the host (:func:`_weighted_softmax_`).

        Raises:
            InputError: unusable logits (shape, dtype, class count, NaN or +inf).
        """
        n = len(windows)
        if self.fixed:
            self.stack[n:] = 0
        x = self.stack if self.fixed else self.stack[:n]
        self.binding.bind_cpu_input(INPUT_NAME, x)
        if self.out is None:
            self.binding.bind_output(OUTPUT_NAME, "cpu")
            self._run_model()
            logits = np.asarray(self.binding.copy_outputs_to_cpu()[0])
            self._check(logits, x.shape)
            self.out = np.empty((self.capacity, *logits.shape[1:]), np.float32)
            self.out[: len(x)] = logits
        else:
            out = self.out[: len(x)]
            self.binding.bind_output(
                OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data
            )
            self._run_model()
        self.batches += 1
        return _weighted_softmax_(self.out[:n], plan.ramps(windows))

    def _run_model(self) -> None:
        started = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        self.model_seconds += time.perf_counter() - started

    @staticmethod
    def _check(logits: npt.NDArray[Any], shape: tuple[int, ...]) -> None:
        if logits.ndim != 4 or logits.shape[0] != shape[0] or logits.shape[2:] != shape[2:]:
            raise InputError(
                f"the ONNX model returned logits of shape {logits.shape} for windows of shape "
                f"{shape}; it must return (N, classes, h, w) at the input resolution."
            )
        if not 1 <= logits.shape[1] <= NODATA_CLASS:
            raise InputError(
                f"the ONNX model returns {logits.shape[1]} classes; 1..255 are supported."
            )
        if logits.dtype != np.float32:
            raise InputError(
                f"the ONNX model returns {logits.dtype} logits; it must return float32."
            )
