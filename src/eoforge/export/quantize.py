"""int8 inference: static QDQ quantization of the exported model, calibrated on training chips.

``onnxruntime.quantization.quantize_static`` inserts QuantizeLinear / DequantizeLinear pairs
around the convolutions, their ReLUs and the max-pooling (weights int8 per output channel,
activations uint8 per tensor, their ranges calibrated on training chips); ONNX Runtime then runs
them as int8 kernels (VNNI where the CPU has it). The ReLUs matter most: quantized, they vanish
into the uint8 range of the convolution before them, so one QLinearConv feeds the next in
ONNX Runtime's NHWC int8 layout; left float, every ReLU costs a dequantize, a float pass and a
requantize (measured on the demo model, two 512 px windows, 2 threads: int8 1.51x fp32 with
convolutions alone, 1.66x with ReLU and max-pooling; the transposed convolutions have no int8
CPU kernel and stay float). The input normalisation and the spectral-index ratios stay float
(raw DN and ratios near 0 would lose most of their precision in 8 bits), and so does the output
head's softmax input range. Which file a run uses is ``infer.precision``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from eoforge.errors import InputError
from eoforge.inference.session import INPUT_NAME
from eoforge.io.atomic import sha256_file, staged_file

__all__ = ["INT8_MODEL_NAME", "QUANTIZED_OPS", "quantize_int8", "with_int8_asset"]

#: File name of the int8 model next to ``model.onnx``.
INT8_MODEL_NAME = "model-int8.onnx"

#: Operators quantized: nothing before the first convolution (normalisation, index ratios).
QUANTIZED_OPS = ("Conv", "Relu", "MaxPool")


class _Chips:
    """``CalibrationDataReader`` over chips, a few at a time."""

    def __init__(self, chips: NDArray[Any], batch: int = 4) -> None:
        self._batches: Iterator[NDArray[np.float32]] = iter(
            np.ascontiguousarray(chips[i : i + batch], dtype=np.float32)
            for i in range(0, len(chips), batch)
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover - called only by some calibration methods
        raise NotImplementedError


def quantize_int8(onnx_path: Path, out_path: Path, calibration: NDArray[Any]) -> dict[str, Any]:
    """Write the static int8 (QDQ) version of an exported model.

    Args:
        onnx_path: the fp32 ``model.onnx``.
        out_path: where to write the int8 model (atomically).
        calibration: training chips ``(N, bands, h, w)`` raw DN that calibrate the activation
            ranges (a few dozen are enough).

    Returns:
        What was done: ``{"path", "sha256", "format", "calibration_chips", "op_types"}``.

    Raises:
        InputError: no calibration chips, or a file onnxruntime cannot quantize.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    chips = np.asarray(calibration)
    if chips.ndim != 4 or len(chips) == 0:
        raise InputError(
            f"int8 calibration needs training chips (N >= 1, bands, h, w), got {chips.shape}; "
            "pass the chip store's 'train' split."
        )
    op_types = list(QUANTIZED_OPS)
    with tempfile.TemporaryDirectory(prefix="eoforge-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:
            raise InputError(
                f"ONNX model '{onnx_path}' cannot be prepared for quantization: {exc}; "
                "re-export it."
            ) from exc
        with staged_file(Path(out_path)) as staging:
            quantize_static(
                str(prepared),
                str(staging),
                _Chips(chips),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    return {
        "path": str(out_path),
        "sha256": sha256_file(Path(out_path)),
        "format": "QDQ",
        "calibration_chips": len(chips),
        "op_types": op_types,
    }


def with_int8_asset(item: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """The model's MLM item with the int8 file as a second model asset (``model-int8``)."""
    path = Path(int8["path"])
    assets = dict(item.get("assets", {}))
    base = dict(assets.get("model", {}))
    assets["model-int8"] = {
        **base,
        "href": path.name,
        "title": "int8 ONNX model (static QDQ: convolutions, ReLU, max-pooling; "
        "infer.precision: int8)",
        "file:size": path.stat().st_size,
        "file:checksum": "1220" + int8["sha256"],
        "eoforge:quantization": {k: int8[k] for k in ("format", "calibration_chips", "op_types")},
    }
    return {**item, "assets": assets}
