"""Contract files: parse and check ``contracts/definitions/<stage>.yaml`` into :class:`Contract` objects.

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

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from eoforge.errors import InputError

if TYPE_CHECKING:
    from great_expectations.expectations.expectation import Expectation

__all__ = [
    "DEFAULT_CONTRACTS_DIR",
    "STAGES",
    "Contract",
    "ExpectationSpec",
    "build_expectations",
    "load_contract",
    "resolve_contracts_dir",
]

#: The contracts shipped with eoforge, package data (``eoforge/contracts/definitions/``).
DEFAULT_CONTRACTS_DIR = Path(str(files("eoforge"))) / "contracts" / "definitions"
#: Stage boundaries that have a contract.
STAGES = ("items", "cube", "chips", "predictions")

_ENV_DIR = "EOFORGE_CONTRACTS_DIR"
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_]*")


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
    build_expectations(contract)  # fail on bad names / arguments at load time
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


def _row_condition(row_filter: Mapping[str, Any]) -> Any:
    from great_expectations.expectations.row_conditions import AndCondition, Column

    conditions = [
        Column(col).is_in(list(val)) if isinstance(val, list) else Column(col) == val
        for col, val in row_filter.items()
    ]
    return conditions[0] if len(conditions) == 1 else AndCondition(conditions=conditions)


def build_expectations(contract: Contract) -> list[Expectation]:
    """The contract's GX expectations, in file order, each tagged with its position in ``meta``.

    Raises:
        InputError: an expectation name is unknown or its kwargs / where do not fit it.
    """
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
