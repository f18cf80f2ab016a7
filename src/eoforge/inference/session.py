"""ONNX Runtime sessions for window inference: options, loading with the ADR 0001 tensor
names checked, and a batch runner that binds preallocated buffers to the session.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
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

    Made with :meth:`take` and handed back with :meth:`give_back`, a runner's two buffers
    outlive the call: the next call on the same session with the same window shape reuses
    them (:class:`_BufferPool`) instead of mapping fresh pages for them.
    """

    def __init__(
        self,
        session: Any,
        capacity: int,
        channels: int,
        height: int,
        width: int,
        fixed: bool,
        buffers: _Buffers | None = None,
    ) -> None:
        self.session = session
        self.capacity = capacity
        self.fixed = fixed  # a static batch dimension: always run `capacity` windows
        self.key = (capacity, channels, height, width, fixed)
        if buffers is None:
            buffers = _Buffers(np.zeros((capacity, channels, height, width), np.float32), None)
        self.stack = buffers.stack
        self.binding = session.io_binding()
        # logits of a previous call of this session and shape: checked then, written into now
        self.out: npt.NDArray[np.float32] | None = buffers.out
        self.batches = 0
        self.model_seconds = 0.0  # wall time of the session's runs (the model alone)

    @classmethod
    def take(
        cls, session: Any, capacity: int, channels: int, height: int, width: int, fixed: bool
    ) -> _BatchRunner:
        """A runner over the idle buffers of an earlier call with this session and window
        shape (:data:`_POOL`), or over new ones."""
        buffers = _POOL.take(session, (capacity, channels, height, width, fixed))
        return cls(session, capacity, channels, height, width, fixed, buffers)

    def give_back(self) -> None:
        """Keep this runner's buffers for the next call with its session (the runner and the
        views it returned must not be used after this)."""
        _POOL.give_back(self.session, self.key, _Buffers(self.stack, self.out))

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


@dataclass(frozen=True)
class _Buffers:
    """A runner's input batch and, once its session has run, its logits buffer."""

    stack: npt.NDArray[np.float32]
    out: npt.NDArray[np.float32] | None


class _BufferPool:
    """Idle :class:`_Buffers` of each session, by window shape, for the next predict call.

    Continuous inference predicts scene after scene with one session; each call used to map
    its input batch and logits afresh (about 18 MB at the 512 px, batch-2 defaults). Measured
    in session 16 on the 2-core Xeon, ``eoforge predict`` of ten bundled scenes: about 2900
    fewer page faults and 10 ms less a scene (1.25 vs 1.35 s for the ten, medians of six
    pairs); where glibc already reuses the freed heap (the inference benchmark's loop), no
    difference. The pool holds at most :attr:`keep` idle sets a session, the least recently returned dropped
    first, and forgets a session's sets when the session is collected (a weak key: the buffers
    do not refer to it). A session that cannot be weakly referenced is not pooled. Two calls at
    once on one session each take their own set.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._idle: weakref.WeakKeyDictionary[Any, list[tuple[tuple[Any, ...], _Buffers]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def take(self, session: Any, key: tuple[Any, ...]) -> _Buffers | None:
        """An idle set of ``session`` for ``key``, removed from the pool; None if there is none."""
        with self._lock:
            try:
                idle = self._idle.get(session)
            except TypeError:  # not weakly referable (or not hashable)
                return None
            for k, (shape, buffers) in enumerate(idle or []):
                if shape == key:
                    del idle[k]  # type: ignore[union-attr]
                    return buffers
        return None

    def give_back(self, session: Any, key: tuple[Any, ...], buffers: _Buffers) -> None:
        """Keep ``buffers`` for the next call on ``session`` with ``key``."""
        with self._lock:
            try:
                idle = self._idle.setdefault(session, [])
            except TypeError:
                return
            idle.append((key, buffers))
            del idle[: max(0, len(idle) - self.keep)]

    def forget(self, session: Any) -> None:
        """Drop the idle sets of ``session`` (their memory goes back with the last view)."""
        with self._lock, contextlib.suppress(TypeError):  # never pooled
            self._idle.pop(session, None)

    def idle(self, session: Any) -> int:
        """Idle sets held for ``session``."""
        with self._lock:
            try:
                return len(self._idle.get(session) or [])
            except TypeError:
                return 0


#: The process's idle runner buffers (:class:`_BufferPool`).
_POOL = _BufferPool()


def _forget_pool_after_fork() -> None:
    """A forked child (the warm engine's flow runs) starts with an empty pool and a free lock:
    a thread of the parent may have held it at the fork, and the parent's sessions are not
    the child's to run."""
    global _POOL
    _POOL = _BufferPool(_POOL.keep)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
