"""Export a trained model to ONNX and prove the export computes what torch computes.

The graph takes raw DN float32 ``image`` (N, bands, H, W) with dynamic N, H, W (H, W
multiples of 8) and returns ``logits`` (N, classes, H, W); normalisation is inside (ADR 0001).
The graph written is the network's inference form (:mod:`eoforge.export.graph`: decoder
concatenations split into summed convolutions, BatchNorm folded), the same function.
The file is checked with ``onnx.checker`` and run with ONNX Runtime against torch on sample
chips before it is renamed into place, so a file at ``out_path`` has passed both checks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from eoforge.errors import ContractViolation, InputError
from eoforge.export.graph import inference_form
from eoforge.inference.session import INPUT_NAME, OUTPUT_NAME
from eoforge.io.atomic import sha256_file, staged_file
from eoforge.training.files import load_model, read_model_config
from eoforge.training.models import check_window

__all__ = [
    "PARITY_TOLERANCE",
    "ExportResult",
    "export_onnx",
    "onnx_logits",
]

#: Largest max |onnx - torch| logit difference the export accepts.
PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well it matched torch."""

    onnx_path: Path
    """The ONNX file (written atomically)."""
    opset: int
    """Default-domain opset of the written graph."""
    max_abs_diff: float
    """Largest absolute logit difference between ONNX Runtime and torch on the sample."""
    n_parity_samples: int
    """Number of chips the parity check ran on."""
    sha256: str
    """sha256 of the ONNX file."""
    exporter: str
    """``torchscript`` (legacy exporter) or ``dynamo`` (torch.export-based fallback)."""


def export_onnx(
    model_dir: Path, out_path: Path, sample: NDArray[Any], opset: int = 17
) -> ExportResult:
    """Export the model in ``model_dir`` to ONNX and check it against torch on ``sample``.

    Args:
        model_dir: a model directory written by :func:`eoforge.training.train.train_model`.
        out_path: where to write the ``.onnx`` file (its folder is created if needed).
        sample: held-out chips ``(N, bands, H, W)``, raw DN (uint16), H and W multiples of 8;
            the first chip traces the graph and all of them are used for the parity check.
        opset: ONNX opset to export with.

    Returns:
        The :class:`ExportResult`.

    Raises:
        InputError: the model directory or the sample is unusable.
        ContractViolation: ``onnx.checker`` rejects the graph (stage ``export``) or the max
            absolute logit difference exceeds :data:`PARITY_TOLERANCE`.
    """
    model = load_model(model_dir)
    config = read_model_config(model_dir)
    sample_f = _check_sample(sample, int(config["architecture"]["in_channels"]))
    out_path = Path(out_path)
    with staged_file(out_path) as tmp:
        # the exported graph is the inference form (exact rewrites, see eoforge.export.graph);
        # parity below is checked against the trained network itself
        exporter = _export(inference_form(model), torch.from_numpy(sample_f[:1]), tmp, opset)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ContractViolation(
                "export",
                [_failure("onnx_checker_passes", str(exc).splitlines()[0][:200], {})],
            ) from exc
        written_opset = _default_opset(tmp)
        with torch.no_grad():
            expected = model(torch.from_numpy(sample_f)).numpy()
        actual = onnx_logits(tmp, sample_f)
        if actual.shape != expected.shape:
            raise ContractViolation(
                "export",
                [
                    _failure(
                        "onnx_output_shape_matches_torch",
                        list(actual.shape),
                        {"shape": list(expected.shape)},
                    )
                ],
            )
        max_abs_diff = float(np.max(np.abs(actual - expected)))
        if not max_abs_diff <= PARITY_TOLERANCE:
            raise ContractViolation(
                "export",
                [
                    _failure(
                        "onnx_torch_max_abs_diff_below",
                        max_abs_diff,
                        {"max_abs_diff": PARITY_TOLERANCE, "samples": len(sample_f)},
                    )
                ],
            )
    return ExportResult(
        onnx_path=out_path,
        opset=written_opset,
        max_abs_diff=max_abs_diff,
        n_parity_samples=len(sample_f),
        sha256=sha256_file(out_path),
        exporter=exporter,
    )


def onnx_logits(
    onnx_path: Path, image: NDArray[Any], threads: int | None = None
) -> NDArray[np.float32]:
    """Run an exported model with ONNX Runtime on CPU.

    Args:
        onnx_path: the ``.onnx`` file.
        image: raw DN ``(N, bands, H, W)``, any numeric dtype (cast to float32).
        threads: intra-op threads (None: ONNX Runtime's default).

    Returns:
        Logits ``(N, classes, H, W)`` float32.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})
    return np.asarray(out, dtype=np.float32)


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Write the graph with the legacy TorchScript exporter, or torch.export if that fails.

    The legacy exporter honours ``opset`` exactly and handles the UNet's dynamic H / W
    directly; it is deprecated in torch 2.9+, so the torch.export-based exporter is the
    fallback for a torch that no longer ships it.
    """
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                dynamo=False,
            )
        return "torchscript"
    except Exception as legacy_error:  # the legacy path may be removed or fail on an op
        auto = torch.export.Dim.AUTO
        try:
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: auto, 2: auto, 3: auto},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program") from legacy_error
            program.save(str(path), external_data=False)
        except Exception as exc:
            raise ContractViolation(
                "export",
                [_failure("torch_onnx_export_succeeds", f"{type(exc).__name__}: {exc}"[:300], {})],
            ) from exc
        return "dynamo"


def _check_sample(sample: NDArray[Any], in_channels: int) -> NDArray[np.float32]:
    arr = np.asarray(sample)
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[1] != in_channels:
        raise InputError(
            f"parity sample must be (N >= 1, {in_channels}, H, W) raw DN chips, got shape "
            f"{arr.shape}; pass held-out chips from the chip store (e.g. the 'test' split's x)."
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"parity sample has dtype {arr.dtype}; pass numeric raw DN (uint16).")
    check_window(int(arr.shape[2]), int(arr.shape[3]))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _default_opset(path: Path) -> int:
    proto = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _failure(expectation: str, offending: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"expectation": expectation, "column": None, "kwargs": kwargs, "offending": offending}
