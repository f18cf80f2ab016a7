"""Data contracts: great-expectations checks of what crosses each stage boundary.

Each stage's output is first summarised as a small pandas table (one row per STAC item, per
cube slice, per chip or per prediction COG: see the ``*_table`` builders), then checked against
the contract ``data-contracts/<stage>.yaml`` with great-expectations (GX Core 1.x, ephemeral
context, cached per process). :func:`enforce` raises :class:`~eoforge.errors.ContractViolation`
with a readable report; :meth:`ContractResult.to_dict` goes into provenance.json.

Contract file format (one YAML file per stage)::

    stage: items                       # must equal the file name without .yaml
    description: what this boundary guarantees
    row_key: [id]                      # optional: columns that name a row in failure reports
    parameters: {max_cloud: 80}        # optional: defaults of {$PARAMETER: name} references
    expectations:
      - expectation: expect_table_row_count_to_be_between   # any GX core expectation, snake_case
        kwargs: {min_value: 1}                               # its keyword arguments
      - expectation: expect_column_values_to_be_in_set
        kwargs: {column: epsg, value_set: [32633]}
        where: {role: band}            # optional: only rows where column == value (list: in)

``expectation`` names a class of ``great_expectations.expectations`` in snake_case
(``expect_column_values_to_be_in_set`` -> ``ExpectColumnValuesToBeInSet``); ``kwargs`` are
passed to it unchanged (``mostly``, ``strict_min`` ... included). ``where`` becomes a GX
``row_condition``. A kwarg value ``{$PARAMETER: name}`` is filled in at validation time from
``parameters`` passed by the caller (e.g. the run's ChipSpec thresholds), else from the file's
``parameters`` defaults. A malformed file or an unknown expectation raises
:class:`~eoforge.errors.InputError` naming the file.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from eoforge.errors import ContractViolation, InputError, InternalError

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations.expectation import Expectation

__all__ = [
    "DEFAULT_CONTRACTS_DIR",
    "STAGES",
    "Contract",
    "ContractResult",
    "ExpectationSpec",
    "chips_table",
    "cube_table",
    "enforce",
    "items_table",
    "load_contract",
    "predictions_table",
    "resolve_contracts_dir",
    "validate_table",
]

#: The contracts shipped with eoforge (``<repo>/data-contracts``).
DEFAULT_CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "data-contracts"
#: Stage boundaries that have a contract.
STAGES = ("items", "cube", "chips", "predictions")

_ENV_DIR = "EOFORGE_CONTRACTS_DIR"
_SPLITS = ("train", "val", "test")
_PREDICTION_NODATA = 255
# Unexpected values quoted per failed expectation: enough to recognise the problem.
_SAMPLE = 5
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_MGRS_IN_ID = re.compile(r"_(\d{1,2}[C-X][A-Z]{2})_")


# --------------------------------------------------------------------------- contract files


@dataclass(frozen=True)
class ExpectationSpec:
    """One entry of a contract file."""

    expectation: str
    """GX expectation name in snake_case, e.g. ``expect_column_values_to_be_in_set``."""
    kwargs: dict[str, Any]
    """Keyword arguments of the expectation, as written in the file."""
    where: dict[str, Any] | None = None
    """Row filter ``{column: value or [values]}``; None checks every row."""


@dataclass(frozen=True)
class Contract:
    """A parsed contract file."""

    stage: str
    """Stage boundary the contract guards (``items``, ``cube``, ``chips``, ``predictions``)."""
    description: str
    """What the boundary guarantees, in words."""
    path: Path
    """The YAML file it was read from."""
    expectations: tuple[ExpectationSpec, ...]
    """The checks, in file order."""
    row_key: tuple[str, ...] = ()
    """Columns whose values name a row in failure reports (e.g. tile/item/variable)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Defaults of the ``{$PARAMETER: name}`` references in the expectations' kwargs."""

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Parameter values for one validation: the file's defaults updated by ``overrides``.

        Raises:
            InputError: an override names a parameter the contract does not declare.
        """
        unknown = set(overrides or {}) - set(self.parameters)
        if unknown:
            raise InputError(
                f"contract '{self.path}' has no parameter(s) {sorted(unknown)}; it declares "
                f"{sorted(self.parameters)}. Declare them under 'parameters' or drop them."
            )
        return {**self.parameters, **(overrides or {})}


def resolve_contracts_dir(override: Path | str | None = None) -> Path:
    """Directory the contracts are read from.

    Args:
        override: explicit directory; wins over everything else.

    Returns:
        ``override``, else ``$EOFORGE_CONTRACTS_DIR``, else :data:`DEFAULT_CONTRACTS_DIR`.
    """
    if override is not None:
        return Path(override)
    env = os.environ.get(_ENV_DIR)
    return Path(env) if env else DEFAULT_CONTRACTS_DIR


def _expectation_class(name: str, path: Path) -> type[Expectation]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import Expectation

    camel = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gxe, camel, None) if name.startswith("expect_") else None
    if not (isinstance(cls, type) and issubclass(cls, Expectation)):
        raise InputError(
            f"contract '{path}': unknown expectation '{name}' (no class "
            f"great_expectations.expectations.{camel}); use a GX core expectation name in "
            "snake_case, e.g. expect_column_values_to_be_in_set."
        )
    return cls


def _parse_entry(entry: Any, index: int, path: Path) -> ExpectationSpec:
    where = f"contract '{path}', expectations[{index}]"
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping with 'expectation' and 'kwargs'.")
    unknown = set(entry) - {"expectation", "kwargs", "where"}
    if unknown:
        raise InputError(
            f"{where} has unknown key(s) {sorted(unknown)}; allowed: expectation, kwargs, where."
        )
    name = entry.get("expectation")
    kwargs = entry.get("kwargs") or {}
    row_filter = entry.get("where")
    if not isinstance(name, str):
        raise InputError(f"{where} needs 'expectation: <snake_case GX expectation name>'.")
    if not isinstance(kwargs, dict):
        raise InputError(f"{where} ({name}): 'kwargs' must be a mapping.")
    if row_filter is not None and not (isinstance(row_filter, dict) and row_filter):
        raise InputError(f"{where} ({name}): 'where' must be a non-empty mapping column -> value.")
    return ExpectationSpec(expectation=name, kwargs=dict(kwargs), where=row_filter)


def load_contract(stage: str, directory: Path | str | None = None) -> Contract:
    """Read and check the contract of one stage.

    Every expectation is instantiated once, so a wrong name or argument fails here.

    Args:
        stage: stage boundary, the file name without ``.yaml``.
        directory: contracts directory (see :func:`resolve_contracts_dir`).

    Returns:
        The parsed contract.

    Raises:
        InputError: the file is missing, not YAML, or not a valid contract.
    """
    if not _STAGE_NAME.fullmatch(stage):
        raise InputError(f"'{stage}' is not a stage name; use one of {', '.join(STAGES)}.")
    path = resolve_contracts_dir(directory) / f"{stage}.yaml"
    if not path.is_file():
        raise InputError(
            f"no data contract for stage '{stage}': '{path}' does not exist; add it or point "
            f"${_ENV_DIR} at a directory holding {', '.join(s + '.yaml' for s in STAGES)}."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"contract '{path}' is not valid YAML: {exc}; fix its syntax.") from exc
    if not isinstance(raw, dict):
        raise InputError(f"contract '{path}' must hold a mapping with 'stage' and 'expectations'.")
    unknown = set(raw) - {"stage", "description", "row_key", "parameters", "expectations"}
    if unknown:
        raise InputError(
            f"contract '{path}' has unknown key(s) {sorted(unknown)}; allowed: stage, "
            "description, row_key, parameters, expectations."
        )
    if raw.get("stage") != stage:
        raise InputError(
            f"contract '{path}' declares stage {raw.get('stage')!r}, expected '{stage}'; "
            "the 'stage' field must match the file name."
        )
    entries = raw.get("expectations")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"contract '{path}' needs a non-empty 'expectations' list.")
    row_key = raw.get("row_key") or []
    if not (isinstance(row_key, list) and all(isinstance(c, str) for c in row_key)):
        raise InputError(f"contract '{path}': 'row_key' must be a list of column names.")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(f"contract '{path}': 'parameters' must be a mapping name -> default.")
    specs = tuple(_parse_entry(e, i, path) for i, e in enumerate(entries))
    undeclared = {n for spec in specs for n in _parameter_names(spec.kwargs)} - set(parameters)
    if undeclared:
        raise InputError(
            f"contract '{path}' uses undeclared parameter(s) {sorted(undeclared)}; give each a "
            "default under 'parameters'."
        )
    contract = Contract(
        stage=stage,
        description=str(raw.get("description") or ""),
        path=path,
        expectations=specs,
        row_key=tuple(row_key),
        parameters={str(k): v for k, v in parameters.items()},
    )
    _build_expectations(contract)  # fail on bad names / arguments at load time
    return contract


def _parameter_names(value: Any) -> set[str]:
    """Names of the ``{$PARAMETER: name}`` references inside a kwargs value."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {str(value["$PARAMETER"])}
        return {n for v in value.values() for n in _parameter_names(v)}
    if isinstance(value, list):
        return {n for v in value for n in _parameter_names(v)}
    return set()


def _fill_parameters(value: Any, parameters: Mapping[str, Any]) -> Any:
    """``value`` with every ``{$PARAMETER: name}`` replaced by its value (for reports)."""
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return parameters.get(str(value["$PARAMETER"]), value)
        return {k: _fill_parameters(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_parameters(v, parameters) for v in value]
    return value


def _row_condition(row_filter: Mapping[str, Any]) -> Any:
    from great_expectations.expectations.row_conditions import AndCondition, Column

    conditions = [
        Column(col).is_in(list(val)) if isinstance(val, list) else Column(col) == val
        for col, val in row_filter.items()
    ]
    return conditions[0] if len(conditions) == 1 else AndCondition(conditions=conditions)


def _build_expectations(contract: Contract) -> list[Expectation]:
    built = []
    for i, spec in enumerate(contract.expectations):
        cls = _expectation_class(spec.expectation, contract.path)
        kwargs = dict(spec.kwargs)
        try:
            if spec.where:
                kwargs["row_condition"] = _row_condition(spec.where)
            # meta carries the file position: GX does not keep suite order in its results.
            built.append(cls(**kwargs, meta={"eoforge_index": i}))
        except Exception as exc:  # pydantic / GX validation errors: the file is wrong
            raise InputError(
                f"contract '{contract.path}', expectations[{i}] ({spec.expectation}) has invalid "
                f"kwargs {spec.kwargs} / where {spec.where}: {exc}".rstrip()
                + "\nFix them to match the GX expectation's signature (where: column -> value "
                "or list of values of one type)."
            ) from exc
    return built


# --------------------------------------------------------------------------- validation


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


class _GxRuntime:
    """The per-process GX ephemeral context with one reusable dataframe batch definition."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

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
            name=f"eoforge-{stage}", expectations=_build_expectations(contract)
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


# --------------------------------------------------------------------------- table builders


def _epsg(props: Mapping[str, Any]) -> int | None:
    """EPSG code from ``proj:epsg`` or ``proj:code``; None (flagged by the contract) if unusable."""
    code = props.get("proj:code")
    raw = props.get("proj:epsg")
    if raw is None and isinstance(code, str) and code.upper().startswith("EPSG:"):
        raw = code.split(":", 1)[1]
    try:
        return None if raw is None else int(raw)
    except (TypeError, ValueError):
        return None


def _tile(props: Mapping[str, Any]) -> str | None:
    code = props.get("grid:code")
    if isinstance(code, str) and code:
        return code.removeprefix("MGRS-")
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    if all(p is not None for p in parts):
        return "".join(str(p) for p in parts)
    tile = props.get("s2:mgrs_tile")
    return str(tile) if tile else None


def items_table(items: Sequence[Mapping[str, Any]], bands: Sequence[str]) -> pd.DataFrame:
    """One row per STAC item (as a dict, e.g. ``pystac.Item.to_dict()``).

    Columns: ``id``, ``collection``, ``datetime`` (string; ``start_datetime`` for range
    items), ``epsg`` (``proj:epsg`` or ``proj:code`` of the item, else of its first asset that
    has one), ``cloud_cover``, ``n_missing_bands``, ``missing_bands`` (comma separated, ``""``
    when none), ``tile`` (MGRS tile, e.g. ``33TWL``).

    Args:
        items: STAC item dicts.
        bands: asset keys every item must carry.
    """
    rows = []
    for item in items:
        props = item.get("properties") or {}
        assets = item.get("assets") or {}
        epsg = _epsg(props)
        if epsg is None:  # proj v2 allows asset-level projection only
            epsg = next((e for a in assets.values() if (e := _epsg(a)) is not None), None)
        missing = [b for b in bands if b not in assets]
        cloud = props.get("eo:cloud_cover")
        rows.append(
            {
                "id": item.get("id"),
                "collection": item.get("collection"),
                "datetime": props.get("datetime") or props.get("start_datetime"),
                "epsg": epsg,
                "cloud_cover": None if cloud is None else float(cloud),
                "n_missing_bands": len(missing),
                "missing_bands": ",".join(missing),
                "tile": _tile(props),
            }
        )
    columns = [
        "id", "collection", "datetime", "epsg", "cloud_cover",
        "n_missing_bands", "missing_bands", "tile",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["epsg"] = table["epsg"].astype("Int64")
    table["cloud_cover"] = table["cloud_cover"].astype("float64")
    return table


def _high_quantile(values: np.ndarray[Any, Any], q: float) -> float:
    if values.size == 0:
        return math.nan
    if values.dtype.kind == "u":  # a histogram is O(n), sorting is not
        cdf = np.cumsum(np.bincount(values.ravel()))
        return float(np.searchsorted(cdf, q * values.size))
    return float(np.quantile(values, q))


def _slice_stats(arr: np.ndarray[Any, Any]) -> list[dict[str, float]]:
    """Per leading index of a (time, y, x) array: statistics over valid (non-zero) pixels."""
    valid = arr != 0
    if arr.dtype.kind == "f":
        valid &= np.isfinite(arr)
    n_pixels = arr.shape[1] * arr.shape[2]
    stats = []
    for t in range(arr.shape[0]):
        values = arr[t][valid[t]]
        has = values.size > 0
        stats.append(
            {
                "valid_fraction": values.size / n_pixels if n_pixels else 0.0,
                "min": float(values.min()) if has else math.nan,
                "max": float(values.max()) if has else math.nan,
                "mean": float(values.mean(dtype=np.float64)) if has else math.nan,
                "q999": _high_quantile(values, 0.999),
            }
        )
    return stats


def _slice_ids(ds: Any) -> list[str]:
    """STAC item id of each time slice: ``item_ids`` attr (eoforge.cube) or variable."""
    n_time = int(ds.sizes.get("time", 0))
    ids = ds.attrs.get("item_ids")
    if isinstance(ids, list) and len(ids) == n_time:
        return [str(i) for i in ids]
    if "item_id" in ds.variables:
        return [str(v) for v in ds["item_id"].values]
    if "time" in ds.variables:  # no ids recorded: name slices by time
        return [str(v) for v in ds["time"].values]
    return [str(t) for t in range(n_time)]


def cube_table(cube_path: Path | str, label_variables: Sequence[str] = ("scl",)) -> pd.DataFrame:
    """One row per (tile, time slice, variable) of a cube store (ADR 0001 layout).

    Columns: ``tile``, ``item_id`` (from the group's ``item_ids`` attribute or ``item_id``
    variable), ``variable``, ``role`` (``label`` for ``label_variables``,
    else ``band``), ``dtype``, ``valid_fraction`` (pixels != 0), ``min``, ``max``, ``mean``,
    ``q999`` (99.9th percentile: a maximum robust to a few odd pixels) over valid pixels (NaN
    when none), ``height``, ``width``, ``crs``. Each variable is read once.

    Args:
        cube_path: the ``cube.zarr`` directory.
        label_variables: variables holding class codes rather than reflectance.
    """
    import xarray as xr
    import zarr

    rows: list[dict[str, Any]] = []
    root = zarr.open_group(str(cube_path), mode="r")
    for tile in sorted(root.group_keys()):
        # chunks=None: plain lazily indexed numpy arrays, no dask graph for a one-shot read
        with xr.open_zarr(str(cube_path), group=tile, chunks=None, consolidated=False) as ds:
            item_ids = _slice_ids(ds)
            crs = ds.attrs.get("crs")
            for name in sorted(str(n) for n in ds.data_vars):
                var = ds[name]
                if var.ndim != 3 or var.dims[0] != "time":
                    continue
                arr = np.asarray(var.values)
                for t, stats in enumerate(_slice_stats(arr)):
                    rows.append(
                        {
                            "tile": tile,
                            "item_id": item_ids[t],
                            "variable": name,
                            "role": "label" if name in label_variables else "band",
                            "dtype": str(arr.dtype),
                            **stats,
                            "height": arr.shape[1],
                            "width": arr.shape[2],
                            "crs": None if crs is None else str(crs),
                        }
                    )
    columns = [
        "tile", "item_id", "variable", "role", "dtype", "valid_fraction",
        "min", "max", "mean", "q999", "height", "width", "crs",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _tile_of(item_id: str, split_tiles: Sequence[str]) -> str | None:
    match = _MGRS_IN_ID.search(f"_{item_id}_")
    if match:
        return match.group(1)
    return split_tiles[0] if len(split_tiles) == 1 else None


def _read_array(group: Any, name: str, store: Path | str) -> np.ndarray[Any, Any]:
    import zarr

    arr = group.get(name)
    if not isinstance(arr, zarr.Array):
        raise InputError(
            f"chips store '{store}': group '{group.path}' has no array '{name}'; "
            "rebuild the chips (layout in docs/adr/0001-store-layout.md)."
        )
    return np.asarray(arr[...])


def chips_table(chips_path: Path | str) -> pd.DataFrame:
    """One row per chip of a chips store (ADR 0001 layout); missing or empty splits are skipped.

    Columns: ``split``, ``index`` (within the split), ``tile`` (parsed from the item id),
    ``item_id``, ``nodata_fraction`` (pixels where any band == 0), ``labelled_fraction``
    (pixels where y != ignore_index), ``n_classes_present``, ``n_invalid_labels`` (pixels whose
    label is neither a class index nor ignore_index), ``x_min``, ``x_max`` (over valid pixels).

    Args:
        chips_path: the ``chips.zarr`` directory.
    """
    import zarr

    root = zarr.open_group(str(chips_path), mode="r")
    attrs: dict[str, Any] = dict(root.attrs)
    ignore = int(attrs.get("ignore_index", 255))
    n_classes = len(attrs.get("classes", []))
    present = set(root.group_keys())
    frames = []
    for split in _SPLITS:
        if split not in present:
            continue
        group = root[split]
        if not isinstance(group, zarr.Group):
            raise InputError(f"chips store '{chips_path}': '{split}' is not a group (ADR 0001).")
        if "x" not in group.array_keys():  # a split with no chips may have no arrays
            continue
        x = _read_array(group, "x", chips_path)
        if x.shape[0] == 0:
            continue
        y = _read_array(group, "y", chips_path)
        split_attrs: dict[str, Any] = dict(group.attrs)
        n = x.shape[0]
        nodata = (x == 0).any(axis=1)  # (n, size, size)
        labelled = y != ignore
        in_range = y < n_classes
        classes_present = np.zeros(n, dtype=np.int64)
        for c in range(n_classes):
            classes_present += (y == c).any(axis=(1, 2))
        big = np.iinfo(x.dtype).max if x.dtype.kind in "ui" else np.inf
        # nodata pixels replaced by a neutral value so they do not win min / max
        x_min = np.where(nodata[:, None], big, x).min(axis=(1, 2, 3))
        x_max = np.where(nodata[:, None], 0, x).max(axis=(1, 2, 3))
        all_nodata = nodata.all(axis=(1, 2))
        item_ids = [str(i) for i in split_attrs.get("item_ids", [""] * n)]
        split_tiles = [str(t) for t in split_attrs.get("tiles", [])]
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "index": np.arange(n),
                    "tile": [_tile_of(i, split_tiles) for i in item_ids],
                    "item_id": item_ids,
                    "nodata_fraction": nodata.mean(axis=(1, 2)),
                    "labelled_fraction": labelled.mean(axis=(1, 2)),
                    "n_classes_present": classes_present,
                    "n_invalid_labels": (labelled & ~in_range).sum(axis=(1, 2)),
                    "x_min": np.where(all_nodata, np.nan, x_min.astype(np.float64)),
                    "x_max": np.where(all_nodata, np.nan, x_max.astype(np.float64)),
                }
            )
        )
    columns = [
        "split", "index", "tile", "item_id", "nodata_fraction", "labelled_fraction",
        "n_classes_present", "n_invalid_labels", "x_min", "x_max",
    ]  # fmt: skip
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def predictions_table(prediction_tifs: Sequence[Path | str], num_classes: int) -> pd.DataFrame:
    """One row per prediction GeoTIFF (uint8 class indices, 255 = nodata).

    Columns: ``path``, ``item_id`` (file stem), ``dtype``, ``crs`` (e.g. ``EPSG:32633``),
    ``height``, ``width``, ``nodata_fraction``, ``max_class`` (over non-nodata pixels, NaN when
    none), ``n_classes`` (= ``num_classes``, so a contract can compare the two), ``tiled``,
    ``overviews`` (count on band 1), ``is_cog`` (written in GDAL's COG layout, or tiled with
    overviews or small enough to fit one tile).

    Args:
        prediction_tifs: the COG files.
        num_classes: number of classes of the model.
    """
    import rasterio

    rows = []
    for tif in prediction_tifs:
        path = Path(tif)
        with rasterio.open(path) as src:
            band = src.read(1)
            overviews = len(src.overviews(1))
            # GDAL tags files written by its COG driver (ghost header + tiles + ordering).
            gdal_cog = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"
            # rasterio reports tiled=False when one tile covers the whole width, so a small
            # single-tile COG only shows as tiled through the layout tag.
            tiled = gdal_cog or bool(src.profile.get("tiled", False))
            block_h, block_w = src.block_shapes[0]
            one_block = src.height <= block_h and src.width <= block_w
            crs = src.crs.to_string() if src.crs else None
            dtype = src.dtypes[0]
        classes = band[band != _PREDICTION_NODATA]
        rows.append(
            {
                "path": str(path),
                "item_id": path.stem,
                "dtype": dtype,
                "crs": crs,
                "height": band.shape[0],
                "width": band.shape[1],
                "nodata_fraction": float((band == _PREDICTION_NODATA).mean()) if band.size else 1.0,
                "max_class": float(classes.max()) if classes.size else math.nan,
                "n_classes": int(num_classes),
                "tiled": tiled,
                "overviews": overviews,
                "is_cog": gdal_cog or (tiled and (overviews > 0 or one_block)),
            }
        )
    columns = [
        "path", "item_id", "dtype", "crs", "height", "width", "nodata_fraction",
        "max_class", "n_classes", "tiled", "overviews", "is_cog",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
