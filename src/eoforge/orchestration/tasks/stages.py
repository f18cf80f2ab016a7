"""One Prefect task per pipeline stage; the work itself lives in :mod:`eoforge.runs` (stages_data, stages_model, stages_report).

- Tasks that touch the network or storage retry with exponential backoff and jitter, but never
  on bad input or a violated data contract (retrying cannot fix those).
- Stored products (cube, chips, model, baseline) are cached across runs: the cache key is the
  product's store key (from STAC item ids + ``updated`` and spec fingerprints, see
  ``eoforge.runs.store.plan_keys``) plus the task's source, and only while the stored product
  still exists. Results are small JSON summaries of URIs, never pickles.
- No task tags: Prefect checks tag concurrency limits on the server for every tagged task run
  whose tag set it has not seen in the last 5 s (its no-limits cache lives that long), and that
  call took 0.1-2.4 s on a loaded 2-core machine (about 7 s of a demo run); eoforge sets no tag
  limits. Limit work with work-pool / deployment concurrency instead; the task names say the stage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from eoforge.config import RunSpec
from eoforge.errors import ContractViolation, InputError
from eoforge.runs.integrity import reusable_model
from eoforge.runs.stages_data import stage_chips, stage_ingest, stage_search
from eoforge.runs.stages_model import stage_baseline, stage_infer, stage_train
from eoforge.runs.stages_report import stage_evaluate, stage_report, stage_track
from eoforge.runs.store import stored

P = ParamSpec("P")
R = TypeVar("R")


def retry_unless_final(task_: Task[Any, Any], run: TaskRun, state: State[Any]) -> bool:
    """Retry only failures that may pass: not bad input, not a contract violation."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(exc, InputError | ContractViolation)


@dataclass
class StoredProduct(CachePolicy):
    """Cache on the product's store key (what identifies its inputs) and the store it lives in."""

    kind: str = "cube"

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        store, key = inputs.get("store"), inputs.get("key")
        if not store or not key:
            return None
        return f"{self.kind}-{key}-{Path(str(store)).resolve()}"


def cached(task_: Task[P, R], store: str, kind: str, key: str) -> Task[P, R]:
    """``task_`` with its cache records kept inside the store, refreshed when the product is gone.

    Keeping the records with the products means deleting the store also forgets the cache;
    a product deleted on its own is rebuilt (``refresh_cache``) instead of served stale.
    """
    return task_.with_options(
        result_storage=_store_results(str(Path(store).resolve())),
        refresh_cache=not stored(store, kind, key).exists(),
    )


def run_cached(
    task_: Task[..., dict[str, Any]], store: str, kind: str, key: str, *args: Any
) -> dict[str, Any]:
    """Run :func:`cached` ``task_`` and return its result, ``reused`` set when Prefect served it.

    A result Prefect serves from its cache is the dict the first run returned, which says
    ``reused: False``; the provenance of this run must say the product was reused.
    """
    if kind == "model":
        reusable_model(stored(store, kind, key))  # quarantines a damaged one: rebuilt below
    state: Any = cached(task_, store, kind, key)(*args, return_state=True)
    result: dict[str, Any] = state.result()  # raises the task's own error if it failed
    if state.name == "Cached":
        result = {**result, "reused": True, "served_by": "prefect-cache"}
    return result


@functools.lru_cache(maxsize=16)
def _store_results(store: str) -> Any:
    """A saved LocalFileSystem block for the store's cache records (Prefect requires saved blocks)."""
    import hashlib

    from prefect.filesystems import LocalFileSystem

    block = LocalFileSystem(basepath=str(Path(store) / ".prefect-results"))
    name = "eoforge-store-" + hashlib.sha256(store.encode()).hexdigest()[:16]
    block.save(name, overwrite=True)
    return block


_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_final,
}


def _cached(kind: str) -> dict[str, Any]:
    return {
        "cache_policy": StoredProduct(kind=kind) + TASK_SOURCE,
        "persist_result": True,
        "result_serializer": "json",
    }


def _tagged(result: dict[str, Any]) -> dict[str, Any]:
    result["task_run_id"] = str(task_run.id) if task_run.id else None
    return result


@task(name="search", persist_result=False, **_RETRIES)
def search_task(
    spec: RunSpec, api_url: str, run_dir: str, ids: list[str] | None = None
) -> dict[str, Any]:
    return _tagged(stage_search(spec, api_url, Path(run_dir), ids))


@task(name="ingest", **_RETRIES, **_cached("cube"))
def ingest_task(spec: RunSpec, items_uri: str, store: str, key: str) -> dict[str, Any]:
    return _tagged(stage_ingest(spec, items_uri, store, key))


@task(name="chips", **_RETRIES, **_cached("chips"))
def chips_task(spec: RunSpec, cube_uri: str, store: str, key: str) -> dict[str, Any]:
    return _tagged(stage_chips(spec, cube_uri, store, key))


@task(name="train-export", **_cached("model"))
def train_task(spec: RunSpec, chips_uri: str, store: str, key: str) -> dict[str, Any]:
    return _tagged(stage_train(spec, chips_uri, store, key))


@task(name="baseline", **_cached("baseline"))
def baseline_task(
    spec: RunSpec, chips_uri: str, cube_uri: str, store: str, key: str
) -> dict[str, Any]:
    return _tagged(stage_baseline(spec, chips_uri, cube_uri, store, key))


@task(name="infer", persist_result=False, **_RETRIES)
def infer_task(
    spec: RunSpec,
    model_dir: str,
    cube_uri: str,
    items_uri: str,
    run_dir: str,
    item_ids: list[str] | None = None,
    copy_model: bool = True,
) -> dict[str, Any]:
    return _tagged(stage_infer(spec, model_dir, cube_uri, items_uri, run_dir, item_ids, copy_model))


@task(name="evaluate", persist_result=False)
def evaluate_task(spec: RunSpec, cube_uri: str, baseline_dir: str, run_dir: str) -> dict[str, Any]:
    return _tagged(stage_evaluate(spec, cube_uri, baseline_dir, run_dir))


@task(name="track", persist_result=False, **_RETRIES)
def track_task(
    spec: RunSpec, run_dir: str, store: str, train: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    return _tagged(stage_track(spec, run_dir, store, train, metrics))


@task(name="report", persist_result=False)
def report_task(
    spec: RunSpec,
    run_dir: str,
    final_dir: str,
    results: dict[str, dict[str, Any]],
    orchestration: dict[str, Any],
) -> dict[str, Any]:
    return stage_report(spec, run_dir, final_dir, results, orchestration)
