"""Window inference through OpenVINO, the CPU runtime eoforge uses by default (ADR 0012).

OpenVINO reads the same ``model.onnx`` (or ``model-int8.onnx``: its QDQ nodes become int8
kernels) that ONNX Runtime does. On this project's 2-core AVX-512 machine its CPU plugin ran
the product's model 1.2x faster than ONNX Runtime in fp32 and 2x faster in int8
(``benchmarks/inference.py``), with the same class maps. :class:`OpenVINOSession` looks to
:func:`eoforge.inference.predict.predict_raster` like an ONNX Runtime session with IO binding,
so windows, blending, nodata, streaming and drift are the predictor's own.

The model is compiled once per input shape (a scene's windows share one shape; the last batch
may be shorter): a static shape lets the CPU plugin pick its blocked layouts and kernels ahead,
about 5 % faster than one dynamic compilation, and a compilation costs ~0.1 s. Inference
precision is pinned to f32: on CPUs with bf16 units OpenVINO would otherwise run in bf16 and
change the class maps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from eoforge.compute.cpus import affinity_cpus, cpu_limit
from eoforge.errors import InputError
from eoforge.inference.binding import Arg, Binding
from eoforge.inference.no_telemetry import decline_openvino_telemetry
from eoforge.inference.safety import check_onnx_external_data
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME

__all__ = ["OPENVINO_CPU", "OpenVINOSession", "openvino_available"]

#: What :meth:`OpenVINOSession.get_providers` names (a CPU runtime: not pipelined).
OPENVINO_CPU = "OpenVINOCPU"
#: Compiled shapes kept per session (a scene needs one or two).
_SHAPES = 4


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported here."""
    decline_openvino_telemetry()  # before openvino's first import (eoforge.inference.no_telemetry)
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _dim(d: Any) -> int | str:
    return d.get_length() if d.is_static else "?"


class OpenVINOSession:
    """An exported eoforge model (``image`` float32 raw DN in, ``logits`` out) run by
    OpenVINO's CPU plugin, with ONNX Runtime's session surface.

    Args:
        onnx_path: ``model.onnx`` or ``model-int8.onnx``.
        threads: inference threads (None: the CPUs a cgroup quota or affinity mask leaves
            this process, :func:`eoforge.compute.cpus.cpu_limit`, else OpenVINO's choice, one
            per physical core).

    Raises:
        InputError: the file is missing, not loadable, has other tensors, or names external
            data outside its folder.
    """

    def __init__(self, onnx_path: Path | str, threads: int | None = None) -> None:
        decline_openvino_telemetry()
        import openvino as ov

        path = Path(onnx_path)
        if not path.is_file():
            raise InputError(f"ONNX model '{path}' does not exist; run the export stage first.")
        if threads is not None and threads < 1:
            raise InputError(
                f"threads={threads} for '{path}' must be >= 1 (or None for all cores)."
            )
        check_onnx_external_data(path)  # external tensors only from the model's own folder
        self.path = path
        self.threads = threads if threads is not None else cpu_limit()
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses only
            raise InputError(
                f"ONNX model '{path}' cannot be read by OpenVINO {ov.__version__}: {exc}; "
                "re-export the model, or use infer.backend onnxruntime."
            ) from exc
        self._inputs = [self._describe(p) for p in self._model.inputs]
        self._outputs = [self._describe(p) for p in self._model.outputs]
        names_in = [a.name for a in self._inputs]
        names_out = [a.name for a in self._outputs]
        if names_in != [INPUT_NAME] or OUTPUT_NAME not in names_out:
            raise InputError(
                f"ONNX model '{path}' has inputs {names_in} and outputs {names_out}; eoforge "
                f"needs input '{INPUT_NAME}' and output '{OUTPUT_NAME}' (ADR 0001): re-export "
                "the model."
            )
        self._out_index = names_out.index(OUTPUT_NAME)
        # per input shape: an infer request of the model compiled for it, and its logits' shape
        self._requests: OrderedDict[tuple[int, ...], tuple[Any, tuple[int, ...]]] = OrderedDict()
        self._lock = threading.Lock()  # two runners may call from the worker and the caller
        self.compilations = 0
        self.batches = 0

    @staticmethod
    def _describe(port: Any) -> Arg:
        dtype = "tensor(float)" if port.get_element_type().get_type_name() == "f32" else "?"
        return Arg(port.get_any_name(), dtype, [_dim(d) for d in port.get_partial_shape()])

    # -- the onnxruntime.InferenceSession surface the predictor uses -----------------------

    def get_inputs(self) -> list[Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[Arg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_CPU]

    def io_binding(self) -> Binding:
        return Binding("OpenVINOSession")

    def run_with_iobinding(self, binding: Binding) -> None:
        if binding.input is None:
            raise InputError(f"no '{INPUT_NAME}' bound before run_with_iobinding.")
        binding.result = self._infer(binding.input, binding.output)

    def run(
        self, output_names: list[str] | None, feeds: dict[str, npt.NDArray[Any]]
    ) -> list[npt.NDArray[np.float32]]:
        """``session.run``: logits of ``feeds['image']``."""
        if INPUT_NAME not in feeds:
            raise InputError(f"feeds {sorted(feeds)} lack '{INPUT_NAME}'.")
        return [self._infer(np.asarray(feeds[INPUT_NAME], np.float32), None)]

    # -- the work ---------------------------------------------------------------------------

    def _infer(
        self, batch: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        """Logits of ``batch``, written into ``out`` when its shape is the logits' shape."""
        import openvino as ov

        if batch.ndim != 4 or batch.dtype != np.float32:
            raise InputError(
                f"a batch must be float32 (N, bands, H, W), got {batch.dtype} {batch.shape}."
            )
        x = np.ascontiguousarray(batch)
        with self._lock:
            request, shape = self._request(x.shape)
            if out is not None and out.shape != shape:
                raise InputError(
                    f"the bound output has shape {out.shape}; the model returns {shape}."
                )
            # Both tensors share numpy's memory and are set before every run: the request never
            # reads or writes through a buffer of an earlier run, which may be freed by now.
            logits = np.empty(shape, np.float32) if out is None else out
            if not logits.flags.c_contiguous:
                raise InputError("the bound output buffer must be C-contiguous float32.")
            request.set_input_tensor(0, ov.Tensor(x, shared_memory=True))
            request.set_output_tensor(self._out_index, ov.Tensor(logits, shared_memory=True))
            request.infer()
            self.batches += 1
        return logits

    def _request(self, shape: tuple[int, ...]) -> tuple[Any, tuple[int, ...]]:
        """An infer request of the model compiled for input ``shape``, and the shape of its
        logits (lock held by the caller)."""
        cached = self._requests.get(shape)
        if cached is not None:
            self._requests.move_to_end(shape)
            return cached
        import openvino as ov

        model = self._model.clone()
        try:
            model.reshape({INPUT_NAME: ov.PartialShape(list(shape))})
            config: dict[str, Any] = {
                "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
            }
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = self.threads
                if self.threads < affinity_cpus():
                    # OpenVINO pins its threads to the first cores of the affinity mask: two
                    # processes of one thread each (Dask workers, pods under a CPU quota) would
                    # share core 0. Measured, two such processes on 2 cores: 180 vs 90 ms a window.
                    config["ENABLE_CPU_PINNING"] = False
            compiled = self._core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise InputError(
                f"OpenVINO cannot run ONNX model '{self.path}' on a batch of shape {shape}: "
                f"{exc}; check the bands and window, or use infer.backend onnxruntime."
            ) from exc
        self.compilations += 1
        entry = (
            compiled.create_infer_request(),
            tuple(compiled.output(self._out_index).get_shape()),
        )
        self._requests[shape] = entry
        while len(self._requests) > _SHAPES:
            self._requests.popitem(last=False)
        return entry
