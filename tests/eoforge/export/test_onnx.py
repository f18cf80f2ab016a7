"""Tests of eoforge.export.onnx: ONNX graph validity, names, dynamic shapes, parity with torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from eoforge_test_helpers import (  # type: ignore[import-not-found]
    CLASSES,
    tiny_trained_model,
)

import eoforge.export.onnx as export_module
from eoforge.errors import ContractViolation, InputError
from eoforge.export.onnx import ExportResult, export_onnx, onnx_logits
from eoforge.io.atomic import sha256_file
from eoforge.training.files import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_trained_model(tmp_path_factory.mktemp("chips"), tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(1, 6000, size=(4, 4, 32, 32)).astype(np.uint16)


@pytest.fixture(scope="module")
def exported(model_dir: Path, sample: np.ndarray) -> ExportResult:
    return export_onnx(model_dir, model_dir / "model.onnx", sample)


def test_export_matches_torch(exported: ExportResult, sample: np.ndarray) -> None:
    assert exported.max_abs_diff < 1e-4
    assert exported.n_parity_samples == len(sample)
    assert exported.opset == 17
    assert exported.sha256 == sha256_file(exported.onnx_path)


def test_graph_passes_the_checker_with_the_adr_names(exported: ExportResult) -> None:
    onnx.checker.check_model(str(exported.onnx_path), full_check=True)
    graph = onnx.load(str(exported.onnx_path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]
    assert not list(exported.onnx_path.parent.glob(".staging-*"))


@pytest.mark.parametrize(("n", "h", "w"), [(1, 64, 64), (3, 128, 96)])
def test_batch_height_and_width_are_dynamic(
    exported: ExportResult, model_dir: Path, n: int, h: int, w: int
) -> None:
    image = np.random.default_rng(1).integers(0, 8000, size=(n, 4, h, w)).astype(np.uint16)
    logits = onnx_logits(exported.onnx_path, image)
    assert logits.shape == (n, len(CLASSES), h, w)
    with torch.no_grad():
        expected = load_model(model_dir)(torch.from_numpy(image.astype(np.float32))).numpy()
    assert float(np.abs(logits - expected).max()) < 1e-4


def test_parity_failure_is_a_contract_violation_and_writes_nothing(
    model_dir: Path, sample: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_module.onnx_logits

    def off_by_one(path: Path, image: Any, threads: int | None = None) -> np.ndarray:
        return real(path, image, threads) + 1.0

    monkeypatch.setattr(export_module, "onnx_logits", off_by_one)
    with pytest.raises(ContractViolation, match="max_abs_diff"):
        export_onnx(model_dir, tmp_path / "model.onnx", sample)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, 3, 32, 32), np.uint16), "parity sample must be"),
        (np.zeros((0, 4, 32, 32), np.uint16), "parity sample must be"),
        (np.zeros((1, 4, 30, 32), np.uint16), "multiple of 8"),
    ],
)
def test_bad_samples_are_input_errors(
    model_dir: Path, tmp_path: Path, bad: np.ndarray, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        export_onnx(model_dir, tmp_path / "m.onnx", bad)


@pytest.mark.slow
def test_dynamo_exporter_is_the_fallback(
    model_dir: Path, sample: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.onnx.export

    def no_legacy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo") is False:
            raise RuntimeError("legacy exporter unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_legacy)
    result = export_onnx(model_dir, tmp_path / "model.onnx", sample)
    assert result.exporter == "dynamo"
    assert result.max_abs_diff < 1e-4
    assert onnx_logits(result.onnx_path, np.ones((1, 4, 128, 96), np.uint16)).shape == (
        1,
        3,
        128,
        96,
    )
