"""One Prefect task per pipeline stage; the work itself lives in :mod:`eoforge.pipeline`.

Tasks that touch the network or storage retry with exponential backoff and jitter, but never
on bad input or a violated data contract (retrying cannot fix those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from eoforge import pipeline
from eoforge.config import RunSpec
from eoforge.errors import ContractViolation, InputError


def retry_unless_final(task_: Task[Any, Any], run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures that may pass: not bad input, not a contract violation."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(exc, InputError | ContractViolation)


def network_task(name: str, tags: list[str]) -> Any:
    """A task decorator for stages that touch the network or storage: bounded, jittered retries."""
    return task(
        name=name,
        tags=tags,
        retries=3,
        retry_delay_seconds=exponential_backoff(backoff_factor=2),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_unless_final,
    )


def _tagged(result: dict[str, Any]) -> dict[str, Any]:
    result["task_run_id"] = str(task_run.id) if task_run.id else None
    return result


@network_task("search", ["stac", "network"])
def search_task(spec: RunSpec, api_url: str, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_search(spec, api_url, Path(run_dir)))


@network_task("ingest", ["cube", "storage"])
def ingest_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_ingest(spec, Path(run_dir)))


@network_task("chips", ["chips", "storage"])
def chips_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_chips(spec, Path(run_dir)))


@task(name="train", tags=["train", "gpu-capable"])
def train_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_train(spec, Path(run_dir)))


@task(name="baseline", tags=["train"])
def baseline_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_baseline(spec, Path(run_dir)))


@task(name="export", tags=["export"])
def export_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_export(spec, Path(run_dir)))


@network_task("infer", ["infer", "storage", "gpu-capable"])
def infer_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_infer(spec, Path(run_dir)))


@task(name="evaluate", tags=["evaluate"])
def evaluate_task(spec: RunSpec, run_dir: str) -> dict[str, Any]:
    return _tagged(pipeline.stage_evaluate(spec, Path(run_dir)))


@task(name="report", tags=["report"])
def report_task(
    spec: RunSpec,
    run_dir: str,
    final_dir: str,
    results: dict[str, dict[str, Any]],
    orchestration: dict[str, Any],
) -> dict[str, Any]:
    return pipeline.stage_report(spec, Path(run_dir), Path(final_dir), results, orchestration)
