"""Chips + training + ONNX export as its own flow, deployed on the `gpu` work pool."""

from __future__ import annotations

from typing import Any

from prefect import flow

from eoforge.config import RunSpec
from eoforge.orchestration.tasks.stages import chips_task, run_cached, train_task


@flow(name="eoforge-train", log_prints=True)
def train_flow(
    spec: RunSpec, cube_uri: str, store: str, chips_key: str, model_key: str
) -> dict[str, Any]:
    """Cut (or reuse) the chips of ``cube_uri``, train, export and publish model ``model_key``."""
    chips = run_cached(chips_task, store, "chips", chips_key, spec, cube_uri, store, chips_key)
    return run_cached(
        train_task, store, "model", model_key, spec, chips["chips_uri"], store, model_key
    )
