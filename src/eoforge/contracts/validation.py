"""Data contracts: great-expectations checks of what crosses each stage boundary.

Each stage's output is first summarised as a small pandas table (one row per STAC item, per
cube slice, per chip or per prediction COG: see the ``*_table`` builders in
:mod:`eoforge.contracts.tables`), then checked against the contract
``contracts/definitions/<stage>.yaml`` (format and loading: :mod:`eoforge.contracts.files`) with
great-expectations (GX Core 1.x, ephemeral context, cached per process). :func:`enforce` raises
:class:`~eoforge.errors.ContractViolation` with a readable report;
:meth:`ContractResult.to_dict` goes into provenance.json. This module is the public entry:
every name in ``__all__`` is importable from here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from eoforge.contracts.files import (
    Contract,
    ExpectationSpec,
    build_expectations,
    load_contract,
)
from eoforge.errors import ContractViolation, InternalError

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition

__all__ = [
    "ContractResult",
    "enforce",
    "validate_table",
]

# Unexpected values quoted per failed expectation: enough to recognise the problem.
_SAMPLE = 5


@dataclass(frozen=True)
class ContractResult:
    """Outcome of checking one table against one stage's contract."""

    stage: str
    """Stage boundary checked."""
    success: bool
    """True when every expectation held."""
    evaluated: int
    """Number of expectations evaluated."""
    failures: list[dict[str, Any]]
    """One dict per failed expectation: ``expectation``, ``column``, ``kwargs``, ``offending``
    (sample of unexpected values keyed by row, the observed value, or the error), and where GX
    reports them ``unexpected_count`` / ``element_count``."""
    seconds: float
    """Wall time of the validation (table building not included)."""
    rows: int = 0
    """Rows of the validated table."""
    contract: str = ""
    """Path of the contract file."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Parameter values the contract was checked with."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for provenance.json (numpy scalars and NaN converted)."""
        out: dict[str, Any] = _jsonable(asdict(self))
        return out


def _thread_only_progress_lock() -> None:
    """Keep GX's progress bars from sharing a lock with other processes.

    GX creates tqdm bars while it validates, even when they are disabled. tqdm's default write
    lock pairs a thread lock with a ``multiprocessing.RLock``, a semaphore that every process
    forked after its creation shares. A forked run killed while holding it (SIGKILL, a
    cancelled run) leaves it held for good, and every later fork's validation blocks on it
    forever; the SIGKILL fault test hung that way. eoforge never draws one bar from several
    processes, so tqdm's thread lock is kept alone, now and in every lock tqdm makes later.
    """
    from tqdm import std

    default = std.TqdmDefaultWriteLock
    default.mp_lock = None  # create_mp_lock() keeps what is set
    pending: list[type] = [std.tqdm]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        lock = cls.__dict__.get("_lock")
        if isinstance(lock, default) and any(lk is not default.th_lock for lk in lock.locks):
            cls._lock = default()  # type: ignore[attr-defined]


class _GxRuntime:
    """The per-process GX ephemeral context with one reusable dataframe batch definition."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _thread_only_progress_lock()  # once a process: later tqdm locks are thread-only too
        self.context = gx.get_context(mode="ephemeral")
        # Progress bars would write to stderr from inside Prefect tasks.
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas("eoforge")
        asset = source.add_dataframe_asset("stage_table")
        self.batch_definition: BatchDefinition[Any] = asset.add_batch_definition_whole_dataframe(
            "whole"
        )


_RUNTIME: _GxRuntime | None = None
# GX contexts are not thread-safe and Prefect runs tasks on a thread pool.
_LOCK = threading.Lock()


def _runtime() -> _GxRuntime:
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = _GxRuntime()
    return _RUNTIME


def validate_table(
    stage: str,
    table: pd.DataFrame,
    contracts_dir: Path | str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> ContractResult:
    """Check a stage table against ``<contracts_dir>/<stage>.yaml``.

    Args:
        stage: stage boundary (``items``, ``cube``, ``chips``, ``predictions``).
        table: the table built by the matching ``*_table`` function.
        contracts_dir: contracts directory; None uses ``$EOFORGE_CONTRACTS_DIR`` or
            :data:`DEFAULT_CONTRACTS_DIR`.
        parameters: values for the contract's declared parameters (e.g. for ``chips``:
            ``max_nodata_fraction``, ``min_labelled_fraction`` from the run's ChipSpec);
            missing ones take the file's defaults.

    Returns:
        The result; failures are reported, not raised (see :func:`enforce`).

    Raises:
        InputError: the contract file is missing or malformed, or ``parameters`` names a
            parameter the contract does not declare.
    """
    import great_expectations as gx

    contract = load_contract(stage, contracts_dir)
    values = contract.resolve(parameters)
    start = time.perf_counter()
    with _LOCK:
        runtime = _runtime()
        suite = gx.ExpectationSuite(
            name=f"eoforge-{stage}", expectations=build_expectations(contract)
        )
        batch = runtime.batch_definition.get_batch(batch_parameters={"dataframe": table})
        outcome = batch.validate(
            suite,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": _SAMPLE},
            expectation_parameters=values,
        )
    results = sorted(outcome.results, key=_file_position)
    failures = [
        _failure(contract.expectations[_file_position(r)], r, table, contract, values)
        for r in results
        if not r.success
    ]
    return ContractResult(
        stage=stage,
        success=not failures,
        evaluated=len(results),
        failures=failures,
        seconds=round(time.perf_counter() - start, 4),
        rows=len(table),
        contract=str(contract.path),
        parameters=_jsonable(values),
    )


def _file_position(res: Any) -> int:
    config = res.expectation_config
    if config is None or "eoforge_index" not in (config.meta or {}):
        raise InternalError("GX returned a validation result without its expectation's meta")
    return int(config.meta["eoforge_index"])


def enforce(
    stage: str,
    table: pd.DataFrame,
    contracts_dir: Path | str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> ContractResult:
    """Like :func:`validate_table`, but raise when the contract is violated.

    Raises:
        ContractViolation: at least one expectation failed; the message names the stage,
            each failed expectation and a sample of offending values.
        InputError: the contract file is missing or malformed.
    """
    result = validate_table(stage, table, contracts_dir, parameters)
    if not result.success:
        raise ContractViolation(stage, result.failures)
    return result


def _failure(
    spec: ExpectationSpec,
    res: Any,
    table: pd.DataFrame,
    contract: Contract,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    kwargs = _fill_parameters(dict(spec.kwargs), parameters)
    if spec.where:
        kwargs["where"] = spec.where
    columns = [kwargs.get(k) for k in ("column", "column_A", "column_B")]
    columns += list(kwargs.get("column_list") or [])
    named = [str(c) for c in columns if c]
    failure: dict[str, Any] = {
        "expectation": spec.expectation,
        "column": ", ".join(named) if named else None,
        "kwargs": _jsonable(kwargs),
        "offending": _offending(res, table, contract.row_key),
    }
    detail = res.result or {}
    for key in ("unexpected_count", "element_count"):
        if key in detail:
            failure[key] = _jsonable(detail[key])
    return failure


def _offending(res: Any, table: pd.DataFrame, row_key: Sequence[str]) -> Any:
    exc = res.exception_info or {}
    if exc.get("raised_exception"):
        return f"error: {exc.get('exception_message')}"
    for nested in exc.values() if isinstance(exc, dict) else ():
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return f"error: {nested.get('exception_message')}"
    detail = res.result or {}
    values = detail.get("partial_unexpected_list")
    if values is not None:
        values = [_jsonable(v) for v in values]
        indices = detail.get("partial_unexpected_index_list")
        keys = [c for c in row_key if c in table.columns]
        if not keys or not indices or len(indices) != len(values):
            return values
        labelled: dict[str, Any] = {}
        for idx, value in zip(indices, values, strict=True):
            label = "/".join(str(table.at[idx, c]) for c in keys)
            labelled[label if label not in labelled else f"{label} (row {idx})"] = value
        return labelled
    if "partial_missing_list" in detail:
        return {"missing": _jsonable(detail["partial_missing_list"])}
    return _jsonable(detail.get("observed_value"))


def _fill_parameters(value: Any, parameters: Mapping[str, Any]) -> Any:
    """``value`` with every ``{$PARAMETER: name}`` replaced by its value (for reports)."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return parameters.get(str(value["$PARAMETER"]), value)
        return {k: _fill_parameters(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_parameters(v, parameters) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """Convert numpy / pandas scalars, tuples and NaN into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "dict"):  # GX Condition objects (pydantic v1)
        return _jsonable(value.dict())
    return str(value)
