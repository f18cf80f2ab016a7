"""Drift of predicted items: a Prefect artifact per run and an ``eoforge.model.drift`` event per
drifted item (see :mod:`eoforge.inference.drift` for the scores). The ``train`` deployment in
``deployments/prefect.yaml`` has a trigger on the event that schedules retraining, disabled by
default."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

__all__ = ["DRIFT_EVENT", "publish_drift"]

#: Event emitted for every predicted item whose drift scores cross a threshold.
DRIFT_EVENT = "eoforge.model.drift"


def model_resource_id(model_dir: str) -> str:
    """The Prefect resource id of a model: ``eoforge.model.<sha256 of its directory>[:16]``."""
    return f"eoforge.model.{hashlib.sha256(model_dir.encode()).hexdigest()[:16]}"


def publish_drift(drift: dict[str, dict[str, Any]], model_dir: str) -> list[str]:
    """Write the run's drift table artifact and emit one event per drifted item.

    Args:
        drift: item id -> drift scores (``stage_infer``'s ``drift``).
        model_dir: the model that predicted them.

    Returns:
        The ids of the drifted items.
    """
    if not drift:
        return []
    rows = [
        {
            "item_id": item_id,
            "drifted": s["drifted"],
            "max_band_shift": round(s["max_band_shift"], 3),
            "max_band_psi": round(s["max_band_psi"], 3),
            "max_band_wasserstein_iqr": round(s["max_band_wasserstein_iqr"], 3),
            "class_psi": round(s["class_psi"], 3),
            "obscured_fraction": round(s["obscured_fraction"], 3),
            "reasons": "; ".join(s["reasons"]),
        }
        for item_id, s in sorted(drift.items())
    ]
    create_table_artifact(
        key="eoforge-drift",
        table=rows,
        description=f"Drift of the predicted items against model {model_dir}'s reference.",
    )
    drifted = [r["item_id"] for r in rows if r["drifted"]]
    for item_id in drifted:
        scores = drift[item_id]
        emit_event(
            event=DRIFT_EVENT,
            resource={
                "prefect.resource.id": model_resource_id(model_dir),
                "prefect.resource.name": model_dir,
            },
            related=[
                {"prefect.resource.id": f"stac.item.{item_id}", "prefect.resource.role": "item"}
            ],
            payload={
                "item_id": item_id,
                "model_dir": model_dir,
                "reasons": scores["reasons"],
                "max_band_shift": scores["max_band_shift"],
                "obscured_fraction": scores["obscured_fraction"],
            },
        )
    return drifted
