"""Tests of eoforge.runs.store's production-model pointer: promote_model and production_model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eoforge.errors import InputError
from eoforge.runs.store import PRODUCTION_POINTER, production_model, promote_model


def _model_dir(root: Path, name: str) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    return str(folder)


def _metrics(miou: float | None, baseline: float | None) -> dict[str, Any]:
    return {"miou": miou, "baseline_miou": baseline, "pixel_accuracy": 0.9}


def test_a_model_that_beats_the_random_forest_is_promoted(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m1")
    decision = promote_model(str(tmp_path), model, _metrics(0.61, 0.51), "run-1")
    assert decision == {
        "promoted": True,
        "model_dir": model,
        "miou": 0.61,
        "baseline_miou": 0.51,
        "run": "run-1",
    }
    assert json.loads((tmp_path / PRODUCTION_POINTER).read_text()) == decision
    assert production_model(str(tmp_path)) == model


def test_a_tie_with_the_random_forest_is_promoted(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m1")
    assert promote_model(str(tmp_path), model, _metrics(0.5, 0.5), "r")["promoted"] is True
    assert production_model(str(tmp_path)) == model


def test_a_worse_model_leaves_the_production_model_in_place(tmp_path: Path) -> None:
    good = _model_dir(tmp_path, "good")
    promote_model(str(tmp_path), good, _metrics(0.6, 0.5), "run-1")
    before = (tmp_path / PRODUCTION_POINTER).read_bytes()
    worse = _model_dir(tmp_path, "worse")
    decision = promote_model(str(tmp_path), worse, _metrics(0.45, 0.5), "run-2")
    assert decision["promoted"] is False and decision["model_dir"] == worse
    assert (decision["miou"], decision["baseline_miou"], decision["run"]) == (0.45, 0.5, "run-2")
    assert (tmp_path / PRODUCTION_POINTER).read_bytes() == before
    assert production_model(str(tmp_path)) == good


def test_a_worse_first_model_writes_no_pointer(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m")
    assert promote_model(str(tmp_path), model, _metrics(0.2, 0.5), "r")["promoted"] is False
    assert not (tmp_path / PRODUCTION_POINTER).exists()
    with pytest.raises(InputError, match="no production model"):
        production_model(str(tmp_path))


def test_a_model_without_a_metric_is_never_promoted(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m")
    decision = promote_model(str(tmp_path), model, _metrics(None, 0.5), "r")
    assert decision["promoted"] is False and decision["miou"] is None
    assert not (tmp_path / PRODUCTION_POINTER).exists()


def test_without_a_baseline_metric_any_scored_model_is_promoted(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m")
    assert promote_model(str(tmp_path), model, _metrics(0.1, None), "r")["promoted"] is True
    assert production_model(str(tmp_path)) == model


def test_a_better_model_replaces_the_pointer(tmp_path: Path) -> None:
    first, second = _model_dir(tmp_path, "a"), _model_dir(tmp_path, "b")
    promote_model(str(tmp_path), first, _metrics(0.55, 0.5), "run-1")
    promote_model(str(tmp_path), second, _metrics(0.58, 0.5), "run-2")
    assert production_model(str(tmp_path)) == second
    assert json.loads((tmp_path / PRODUCTION_POINTER).read_text())["run"] == "run-2"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [PRODUCTION_POINTER]


def test_a_pointer_to_a_model_without_onnx_is_refused(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, "m")
    promote_model(str(tmp_path), model, _metrics(0.6, 0.5), "r")
    (Path(model) / "model.onnx").unlink()
    with pytest.raises(InputError, match=r"no model\.onnx"):
        production_model(str(tmp_path))
