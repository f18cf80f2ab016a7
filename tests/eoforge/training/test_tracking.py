from __future__ import annotations

import json
from pathlib import Path

import pytest

from eoforge.training.tracking import default_tracking_uri, log_training_run


def test_training_run_is_recorded_with_curves_metrics_and_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = tmp_path / "model"
    model.mkdir()
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_miou": 0.1 * e} for e in (1, 2, 3)]
    (model / "model.json").write_text(json.dumps({"history": history}))
    curve = tmp_path / "curve.png"
    curve.write_bytes(b"\x89PNG fake")
    uri = default_tracking_uri(tmp_path / "store")
    assert uri.startswith("sqlite:///") and uri.endswith("store/mlflow.db")
    ids = log_training_run(
        uri,
        "unit",
        {"train": {"seed": 1, "max_epochs": 3}},
        model,
        {"miou": 0.6, "pixel_accuracy": 0.9, "per_class_iou": {"water": 0.5, "cloud": None}},
        [curve],
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(ids["run_id"])
    assert run.data.params["train.seed"] == "1"
    assert run.data.metrics["test_miou"] == pytest.approx(0.6)
    assert run.data.metrics["test_iou_water"] == pytest.approx(0.5)
    assert [m.value for m in client.get_metric_history(ids["run_id"], "val_miou")] == pytest.approx(
        [0.1, 0.2, 0.3]
    )
    names = {a.path for a in client.list_artifacts(ids["run_id"])}
    assert {"model.json", "curve.png"} <= names
