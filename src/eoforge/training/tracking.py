"""Experiment tracking: every training run's parameters, curves, test metrics and artifacts in MLflow.

The tracking URI is ``$MLFLOW_TRACKING_URI`` if set, else a SQLite store in the eoforge store
(``sqlite:///<store>/mlflow.db``, artifacts beside it), so local runs need no server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["default_tracking_uri", "log_training_run"]

EXPERIMENT = "eoforge"


def default_tracking_uri(store: Path | str) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite tracking store inside ``store``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = Path(store).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _flat(prefix: str, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, list | tuple):
        out[prefix] = ",".join(map(str, obj))
    else:
        out[prefix] = obj
    return out


def log_training_run(
    tracking_uri: str,
    run_name: str,
    params: dict[str, Any],
    model_dir: Path,
    metrics: dict[str, Any],
    artifacts: list[Path],
    tags: dict[str, str] | None = None,
) -> dict[str, str]:
    """Record one training run: params, per-epoch curves from ``model.json``, test metrics, files.

    Returns:
        ``run_id``, ``experiment_id`` and ``tracking_uri`` (for provenance and artifacts).
    """
    import mlflow

    store_dir = tracking_uri.removeprefix("sqlite:///")
    client_kwargs: dict[str, Any] = {}
    mlflow.set_tracking_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        client_kwargs["artifact_location"] = Path(store_dir).with_name("mlartifacts").as_uri()
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(EXPERIMENT, **client_kwargs)
    config = json.loads((model_dir / "model.json").read_text())
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags or {}) as run:
        flat = _flat("", params, {})
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        for row in config.get("history", []):
            step = int(row.get("epoch", 0))
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in row.items()
                    if k != "epoch" and isinstance(v, int | float)
                },
                step=step,
            )
        scalars = {
            f"test_{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for name, iou in (metrics.get("per_class_iou") or {}).items():
            if iou is not None:
                scalars[f"test_iou_{name}"] = float(iou)
        mlflow.log_metrics(scalars)
        for path in [model_dir / "model.json", *artifacts]:
            if path.is_file():
                mlflow.log_artifact(str(path))
        return {
            "run_id": run.info.run_id,
            "experiment_id": str(exp_id),
            "tracking_uri": tracking_uri,
        }
