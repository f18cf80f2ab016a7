"""The physical limit of convolutional inference on this machine, from FLOPs.

``limit Mpx/s = achievable conv GFLOP/s / FLOP per output pixel``: the model's FLOPs are
counted by torch (``torch.utils.flop_counter``) and the achievable rate is measured here, on
the model's own convolution shapes (3x3, C -> C, at the resolution of each UNet level), with
ONNX Runtime (a chain of four Conv+ReLU, which it runs in its blocked NCHWc layout), OpenVINO
(the same chain, compiled for its static shape) and torch (channels-last conv2d), timed
round-robin with the model's own whole-scene runs so all see the same load; the best median of
any shape and runtime is the achievable rate.

That limit assumes every FLOP runs at the best shape's rate. A UNet spends about as many FLOPs
at each level (channels double as the area quarters), and the shallow levels' convolutions
(few channels over a large area) are bound by memory, not arithmetic. ``mpx_per_s_by_level``
is the same limit level by level: each convolution's FLOPs at the best rate measured for its
level's shape (:func:`flop_by_level`), summed as times. It is reported beside the flat limit,
not instead of it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from eoforge.inference.openvino_session import openvino_available
from eoforge.inference.session import session_options

#: Convs chained in one ONNX graph when measuring a shape (amortises the layout reorders).
CHAIN = 4


def flop_per_pixel(model: torch.nn.Module, channels: int, window: int) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one forward pass per output pixel, total and by op."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, channels, window, window)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    by_op = {str(op): float(n) / window**2 for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": float(counter.get_total_flops()) / window**2, "by_op": by_op}  # type: ignore[dict-item]


def flop_by_level(model: torch.nn.Module, channels: int, window: int) -> dict[int, float]:
    """FLOPs per output pixel of the model's convolutions, by UNet level (0: the window's own
    resolution, 1: half of it, ...), from hooks on every ``Conv2d`` / ``ConvTranspose2d``."""
    import math

    levels: dict[int, float] = {}

    def count(module: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        assert isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        height, width = out.shape[-2:]
        k = module.kernel_size[0] * module.kernel_size[1]
        macs = module.in_channels // module.groups * module.out_channels * k * height * width
        if isinstance(module, torch.nn.ConvTranspose2d):  # k taps per *input* pixel
            macs //= module.stride[0] * module.stride[1]
        level = max(0, round(math.log2(window / height)))
        levels[level] = levels.get(level, 0.0) + 2.0 * macs / window**2

    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    handles = [m.register_forward_hook(count) for m in convs]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, channels, window, window))
    finally:
        for handle in handles:
            handle.remove()
    return levels


def _conv_chain(channels: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for k in range(CHAIN):
        w = (rng.standard_normal((channels, channels, 3, 3)) * (2 / (9 * channels)) ** 0.5).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        inits.append(numpy_helper.from_array(np.zeros(channels, np.float32), f"b{k}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1] * 4))
        out = "y" if k == CHAIN - 1 else f"r{k}"
        nodes.append(helper.make_node("Relu", [f"c{k}"], [out]))
        prev = out
    dims = ["n", channels, "h", "w"]
    graph = helper.make_graph(
        nodes,
        "conv_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def conv_contenders(
    shapes: list[tuple[int, int]], batch: int, threads: int
) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """Callables running the model's 3x3 conv shapes (ORT NCHWc chain, the same chain in
    OpenVINO when installed, torch channels-last), to be timed round-robin with the model
    itself, and the FLOPs of one call of each."""
    fns: dict[str, Callable[[], Any]] = {}
    flops: dict[str, float] = {}
    for channels, edge in shapes:
        one = 2.0 * channels * channels * 9 * edge * edge * batch
        x = np.random.default_rng(1).standard_normal((batch, channels, edge, edge))
        x32 = x.astype(np.float32)
        session = ort.InferenceSession(
            _conv_chain(channels), session_options(threads), providers=["CPUExecutionProvider"]
        )
        name = f"conv{channels}x{edge}"
        fns[f"{name}_ort_nchwc"] = functools.partial(session.run, None, {"x": x32})
        flops[f"{name}_ort_nchwc"] = CHAIN * one
        if openvino_available():
            fns[f"{name}_openvino"] = _openvino_chain(channels, x32, threads)
            flops[f"{name}_openvino"] = CHAIN * one
        xt = torch.from_numpy(x32).contiguous(memory_format=torch.channels_last)
        wt = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
        fns[f"{name}_torch_channels_last"] = functools.partial(_torch_conv, xt, wt)
        flops[f"{name}_torch_channels_last"] = one
    return fns, flops


def _openvino_chain(channels: int, x: np.ndarray, threads: int) -> Callable[[], Any]:
    """The conv chain compiled by OpenVINO's CPU plugin for ``x``'s shape, f32."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.onnx"
        path.write_bytes(_conv_chain(channels))
        model = core.read_model(str(path))
    model.reshape({"x": ov.PartialShape(list(x.shape))})
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return functools.partial(request.infer, {0: x}, share_inputs=True)


def _torch_conv(x: torch.Tensor, w: torch.Tensor) -> None:
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, w, padding=1)


def model_shapes(widths: list[int], window: int) -> list[tuple[int, int]]:
    """(channels, edge) of the UNet's 3x3 convs at each level for one window."""
    return [(w, window >> level) for level, w in enumerate(widths)]


def limit_from_times(
    model: torch.nn.Module,
    channels: int,
    window: int,
    flops: dict[str, float],
    times: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """``limits`` section from round-robin times of :func:`conv_contenders`."""
    per_px = flop_per_pixel(model, channels, window)
    rates = {
        name: {
            "gflop_per_s": flops[name] / times[name]["median"] / 1e9,
            "gflop_per_s_best": flops[name] / times[name]["min"] / 1e9,
            "gflop_per_cpu_s": flops[name] / times[name]["cpu_median"] / 1e9,
        }
        for name in flops
    }
    best_cpu = max(r["gflop_per_cpu_s"] for r in rates.values())
    best = max(r["gflop_per_s"] for r in rates.values())
    best_of_best = max(r["gflop_per_s_best"] for r in rates.values())
    # level by level: a level's convolutions at the best rate of its measured shape (the
    # flat best where no shape of that level was measured)
    by_level = flop_by_level(model, channels, window)
    level_rate = {}
    for level in by_level:
        edge = window >> level
        measured = [
            r["gflop_per_s"] for n, r in rates.items() if n.split("_")[0].endswith(f"x{edge}")
        ]
        level_rate[level] = max(measured) if measured else best
    seconds_per_px = sum(f / (level_rate[lv] * 1e9) for lv, f in by_level.items())
    return {
        "flop_per_output_px": per_px["total"],
        "flop_per_output_px_by_op": per_px["by_op"],
        "conv_rates": rates,
        "achievable_conv_gflop_per_s": best,
        "mpx_per_s": best * 1e9 / per_px["total"] / 1e6,
        "mpx_per_s_best": best_of_best * 1e9 / per_px["total"] / 1e6,
        "flop_per_output_px_by_level": {str(k): v for k, v in sorted(by_level.items())},
        "gflop_per_s_by_level": {str(k): v for k, v in sorted(level_rate.items())},
        "mpx_per_s_by_level": 1 / seconds_per_px / 1e6 if seconds_per_px else None,
        "definition_by_level": "each level's conv FLOPs (hooks on the model's convolutions) at "
        "the best median GFLOP/s of that level's C -> C 3x3 shape, times summed; the decoder's "
        "2C -> C convolutions are taken at their level's C -> C rate",
        "achievable_conv_gflop_per_cpu_s": best_cpu,
        "mpx_per_cpu_s": best_cpu * 1e9 / per_px["total"] / 1e6,
        "definition": "best median GFLOP/s of the model's 3x3 conv shapes (ORT NCHWc or "
        f"OpenVINO chain of {CHAIN}, or torch channels-last), timed round-robin with the whole-scene runs / the "
        "model's FLOP per output pixel (torch flop counter)",
    }


__all__ = [
    "conv_contenders",
    "flop_by_level",
    "flop_per_pixel",
    "limit_from_times",
    "model_shapes",
]
