"""The physical limit of convolutional inference on this machine, from FLOPs.

``limit Mpx/s = achievable conv GFLOP/s / FLOP per output pixel``: the model's FLOPs are
counted by torch (``torch.utils.flop_counter``) and the achievable rate is measured here, on
the model's own convolution shapes (3x3, C -> C, at the resolution of each UNet level), with
both ONNX Runtime (a chain of four Conv+ReLU, which it runs in its blocked NCHWc layout) and
torch (channels-last conv2d); the best median of any shape and runtime is the achievable rate.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

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


def _times(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _torch_conv(x: torch.Tensor, w: torch.Tensor) -> None:
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, w, padding=1)


def conv_rates(
    shapes: list[tuple[int, int]], batch: int, threads: int, repeats: int
) -> list[dict[str, Any]]:
    """Measured GFLOP/s of 3x3 convs for each (channels, edge), ORT and torch channels-last."""
    rows = []
    for channels, edge in shapes:
        flops = 2.0 * channels * channels * 9 * edge * edge * batch
        x = np.random.default_rng(1).standard_normal((batch, channels, edge, edge))
        x32 = x.astype(np.float32)
        session = ort.InferenceSession(
            _conv_chain(channels), session_options(threads), providers=["CPUExecutionProvider"]
        )
        ort_t = _times(functools.partial(session.run, None, {"x": x32}), repeats)
        xt = torch.from_numpy(x32).contiguous(memory_format=torch.channels_last)
        wt = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
        torch_t = _times(functools.partial(_torch_conv, xt, wt), repeats)
        rows.append(
            {
                "channels": channels,
                "edge": edge,
                "batch": batch,
                "ort_nchwc_gflop_per_s": CHAIN * flops / statistics.median(ort_t) / 1e9,
                "ort_nchwc_gflop_per_s_best": CHAIN * flops / min(ort_t) / 1e9,
                "torch_channels_last_gflop_per_s": flops / statistics.median(torch_t) / 1e9,
                "torch_channels_last_gflop_per_s_best": flops / min(torch_t) / 1e9,
            }
        )
    return rows


def limit(
    model: torch.nn.Module,
    channels: int,
    widths: list[int],
    window: int,
    batch: int,
    threads: int,
    repeats: int,
) -> dict[str, Any]:
    """``limits`` section: FLOP per pixel, measured conv rates, and the Mpx/s they allow."""
    flops = flop_per_pixel(model, channels, window)
    shapes = [(w, window >> level) for level, w in enumerate(widths)]
    rates = conv_rates(shapes, batch, threads, repeats)
    best = max(max(r["ort_nchwc_gflop_per_s"], r["torch_channels_last_gflop_per_s"]) for r in rates)
    return {
        "flop_per_output_px": flops["total"],
        "flop_per_output_px_by_op": flops["by_op"],
        "conv_rates": rates,
        "achievable_conv_gflop_per_s": best,
        "mpx_per_s": best * 1e9 / flops["total"] / 1e6,
        "definition": "best median GFLOP/s of the model's 3x3 conv shapes (ORT NCHWc chain or "
        "torch channels-last) / the model's FLOP per output pixel (torch flop counter)",
    }


__all__ = ["conv_rates", "flop_per_pixel", "limit"]
