"""The optional GPU path: device detection, execution providers, AMP, and chips read into GPU memory.

Everything here falls back to the CPU when there is no CUDA device or the GPU packages
(``pip install .[gpu]``: onnxruntime-gpu, cupy, kvikio) are missing, and says which route it took.
Detection asks NVML, which creates no CUDA context, so calling it before ``fork`` (Dask, Prefect
process pools) is safe; ``EOFORGE_DISABLE_GPU=1`` or an empty ``CUDA_VISIBLE_DEVICES`` forces the
CPU path.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort
import zarr

from eoforge.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CUDA_PROVIDER",
    "DISABLE_ENV",
    "ChipRoute",
    "GpuChips",
    "UtilisationSampler",
    "amp_autocast",
    "amp_dtype",
    "chip_read_route",
    "cuda_available",
    "cuda_device_count",
    "grad_scaler",
    "ort_cuda_available",
    "ort_providers",
    "read_chips_to_gpu",
    "torch_device",
]

#: ONNX Runtime's CUDA execution provider (in onnxruntime-gpu builds only).
CUDA_PROVIDER = "CUDAExecutionProvider"
#: Set to 1 to keep everything on the CPU even when a GPU is present.
DISABLE_ENV = "EOFORGE_DISABLE_GPU"

#: How :func:`read_chips_to_gpu` got the chips: GPUDirect Storage via kvikio, zarr's GPU buffers
#: (host read, then device copy by cupy), a torch host-to-device copy, or CPU tensors.
ChipRoute = Literal["kvikio", "cupy", "torch", "cpu"]

_NVML_NAMES = ("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")


def _disabled() -> bool:
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is not None and visible.strip() in ("", "-1")


def _nvml() -> Any | None:
    for name in _NVML_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.cache
def _nvml_device_count() -> int:
    lib = _nvml()
    if lib is not None:
        try:
            if lib.nvmlInit_v2() != 0:
                return 0
            count = ctypes.c_uint(0)
            ok = lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
            lib.nvmlShutdown()
        except AttributeError:  # a library without the v2 entry points: too old to use
            return 0
        return int(count.value) if ok else 0
    return 0


class _NvmlUtilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class UtilisationSampler:
    """Sample a GPU's busy percentage (NVML ``utilization.gpu``) in a background thread.

    NVML reports, per sample period, the percentage of time one or more kernels ran on the
    device: the number ``nvidia-smi`` shows. Use as a context manager around the work; read
    :attr:`samples` (percent, one per ``interval_s``) or :meth:`summary` after. Without NVML or
    a GPU it records nothing and :attr:`available` is False.
    """

    def __init__(self, device_index: int = 0, interval_s: float = 0.05) -> None:
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.available = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lib = _nvml() if cuda_available() else None
        self._handle = ctypes.c_void_p()

    def __enter__(self) -> UtilisationSampler:
        lib = self._lib
        if lib is not None and lib.nvmlInit_v2() == 0:
            index = ctypes.c_uint(self.device_index)
            if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self._handle)) == 0:
                self.available = True
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._lib is not None and self.available:
            self._lib.nvmlShutdown()

    def _run(self) -> None:
        assert self._lib is not None
        started = time.perf_counter()
        rates = _NvmlUtilization()
        while not self._stop.is_set():
            if self._lib.nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(rates)) == 0:
                self.samples.append((time.perf_counter() - started, int(rates.gpu)))
            self._stop.wait(self.interval_s)

    def summary(self, skip_s: float = 1.0) -> dict[str, Any]:
        """Median / mean / min busy % of the samples after the first ``skip_s`` (warm-up)."""
        steady = [pct for t, pct in self.samples if t >= skip_s]
        if not steady:
            return {"available": self.available, "samples": 0}
        return {
            "available": True,
            "samples": len(steady),
            "median_pct": float(statistics.median(steady)),
            "mean_pct": float(statistics.fmean(steady)),
            "min_pct": float(min(steady)),
            "interval_s": self.interval_s,
            "skipped_first_s": skip_s,
        }


def cuda_device_count() -> int:
    """Number of NVIDIA GPUs this process may use (0 without driver, GPU, or when disabled)."""
    if _disabled():
        return 0
    n = _nvml_device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if n and visible:
        n = min(n, len([d for d in visible.split(",") if d.strip()]))
    return n


def cuda_available() -> bool:
    """Whether a CUDA GPU is present and not disabled (see the module docstring)."""
    return cuda_device_count() > 0


def ort_cuda_available() -> bool:
    """Whether ONNX Runtime can run on the GPU: an onnxruntime-gpu build and a CUDA device."""
    return CUDA_PROVIDER in ort.get_available_providers() and cuda_available()


def ort_providers(prefer_gpu: bool = True, device_id: int = 0) -> list[Any]:
    """Execution providers for :class:`onnxruntime.InferenceSession`, fastest first.

    Args:
        prefer_gpu: put the CUDA provider first when :func:`ort_cuda_available`.
        device_id: the CUDA device to run on.

    Returns:
        ``[("CUDAExecutionProvider", {...}), "CPUExecutionProvider"]`` or ``["CPUExecutionProvider"]``.
    """
    if prefer_gpu and ort_cuda_available():
        # EXHAUSTIVE conv search pays off: the windows have one shape, searched once per session
        options = {"device_id": str(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE"}
        return [(CUDA_PROVIDER, options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def torch_device(prefer_gpu: bool = True) -> torch.device:
    """``cuda`` when torch sees a GPU (and it is not disabled), else ``cpu``."""
    import torch

    if prefer_gpu and cuda_available() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training on ``device``: bf16 where supported, else fp16; None on CPU.

    Mixed precision is used on CUDA only: on CPU it changes results without a speed-up here.
    """
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for the forward pass and loss on CUDA; a no-op context on CPU."""
    import torch

    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only where AMP runs in fp16 (bf16 and fp32 need none)."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)


# --------------------------------------------------------------------------- chips on the GPU


@dataclass(frozen=True)
class GpuChips:
    """Chips and labels read by :func:`read_chips_to_gpu`."""

    x: torch.Tensor
    """Raw DN as float32 ``(n, bands, size, size)``."""
    y: torch.Tensor
    """Class indices as int64 ``(n, size, size)`` (ignore_index kept)."""
    route: ChipRoute
    """How the data got there (see :data:`ChipRoute`)."""


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def chip_read_route(prefer_gpu: bool = True) -> ChipRoute:
    """The route :func:`read_chips_to_gpu` takes on this machine.

    ``kvikio`` with cupy and kvikio installed and a GPU, ``cupy`` with cupy only, ``torch`` with
    a GPU that torch sees but neither package, ``cpu`` otherwise.
    """
    if not prefer_gpu or not cuda_available():
        return "cpu"
    if _has("cupy"):
        return "kvikio" if _has("kvikio") else "cupy"
    import torch

    return "torch" if torch.cuda.is_available() else "cpu"


def _selection(indices: Sequence[int] | None, n: int, where: str) -> Any:
    if indices is None:
        return slice(None)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
        raise InputError(f"chip indices for {where} must be 0..{n - 1}, got {list(indices)[:10]}.")
    return idx


def read_chips_to_gpu(
    chips_path: Path,
    split: str,
    indices: Sequence[int] | None = None,
    *,
    prefer_gpu: bool = True,
    device_id: int = 0,
) -> GpuChips:
    """Read chips of one split straight into GPU memory as torch tensors.

    On a GPU with cupy and kvikio the chunks are read by kvikio's ``GDSStore`` (GPUDirect
    Storage where the file system supports it) into zarr's GPU buffers
    (``zarr.config.enable_gpu()``), cast on the device by cupy and handed to torch through
    DLPack without a copy. Without kvikio zarr reads on the host and copies each chunk to the
    device; without cupy torch copies the host array; without a GPU the tensors stay on the CPU.

    Args:
        chips_path: chip store (ADR 0001).
        split: ``train``, ``val`` or ``test``.
        indices: chips to read, in this order (None: all).
        prefer_gpu: use the GPU when there is one.
        device_id: the CUDA device.

    Returns:
        :class:`GpuChips` (x float32, y int64, and the route taken).

    Raises:
        InputError: the store or split is missing, or an index is out of range.
    """
    path = Path(chips_path)
    where = f"split '{split}' of chip store '{path}'"
    if not (path / split).is_dir():
        raise InputError(f"{where} does not exist; run the chips stage first or fix the path.")
    route = chip_read_route(prefer_gpu)
    if route in ("kvikio", "cupy"):
        return _read_with_cupy(path, split, indices, route, device_id, where)
    import torch

    group = zarr.open_group(str(path), mode="r")
    xa, ya = group[f"{split}/x"], group[f"{split}/y"]
    assert isinstance(xa, zarr.Array) and isinstance(ya, zarr.Array)
    sel = _selection(indices, xa.shape[0], where)
    x = torch.from_numpy(np.ascontiguousarray(xa.oindex[sel], dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(ya.oindex[sel], dtype=np.int64))
    if route == "torch":
        device = torch.device("cuda", device_id)
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
        torch.cuda.synchronize(device)
    return GpuChips(x=x, y=y, route=route)


def _read_with_cupy(
    path: Path,
    split: str,
    indices: Sequence[int] | None,
    route: ChipRoute,
    device_id: int,
    where: str,
) -> GpuChips:  # pragma: no cover - needs a CUDA device with cupy
    import cupy
    from torch.utils.dlpack import from_dlpack

    with cupy.cuda.Device(device_id), zarr.config.enable_gpu():
        if route == "kvikio":
            from kvikio.zarr import GDSStore

            try:
                store: Any = GDSStore(root=str(path), read_only=True)
            except TypeError:  # a kvikio whose GDSStore takes no read_only
                store = GDSStore(root=str(path))
        else:
            store = zarr.storage.LocalStore(str(path), read_only=True)
        group = zarr.open_group(store=store, mode="r")
        xa, ya = group[f"{split}/x"], group[f"{split}/y"]
        assert isinstance(xa, zarr.Array) and isinstance(ya, zarr.Array)
        sel = _selection(indices, xa.shape[0], where)
        x = cupy.ascontiguousarray(cupy.asarray(xa.oindex[sel]).astype(cupy.float32))
        y = cupy.ascontiguousarray(cupy.asarray(ya.oindex[sel]).astype(cupy.int64))
        cupy.cuda.get_current_stream().synchronize()
    return GpuChips(x=from_dlpack(x), y=from_dlpack(y), route=route)
