"""The one exception tree of eoforge, grouped by what the caller should do about an error.

- :class:`InputError`: fix the input (config, catalog, labels, files) and run again.
- :class:`TransientError`: retry later; a service or the network failed in a way that may pass.
- :class:`ContractViolation`: data broke a data contract at a stage boundary; do not retry.
- :class:`InternalError`: a bug in eoforge; report it.

Every message names the input, says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ContractViolation",
    "EoforgeError",
    "InputError",
    "InternalError",
    "TransientError",
    "exit_code_for",
]


class EoforgeError(Exception):
    """Base class of every error eoforge raises on purpose."""

    exit_code: int = 1


class InputError(EoforgeError):
    """The input is wrong: the user must change it. Never retried."""

    exit_code = 2


class ContractViolation(EoforgeError):
    """Data failed a data contract at a stage boundary. Never retried.

    Args:
        stage: the stage boundary (``items``, ``cube``, ``chips``, ``predictions``).
        failures: one dict per failed expectation with keys ``expectation``,
            ``column`` (may be None), ``kwargs`` and ``offending`` (sample of bad values).
    """

    exit_code = 3

    def __init__(self, stage: str, failures: Sequence[dict[str, Any]]) -> None:
        self.stage = stage
        self.failures = list(failures)
        lines = [f"data contract '{stage}' violated ({len(self.failures)} expectation(s) failed):"]
        for f in self.failures:
            col = f" on column '{f['column']}'" if f.get("column") else ""
            lines.append(
                f"  - {f['expectation']}{col}: offending values {f.get('offending')!r}"
                f" (expected {f.get('kwargs')})"
            )
        lines.append(
            f"  The data reaching the '{stage}' stage is not what the contract in "
            f"eoforge/contracts/definitions/{stage}.yaml allows; fix the input or the upstream stage."
        )
        super().__init__("\n".join(lines))


class TransientError(EoforgeError):
    """A service or network failure that may pass: safe to retry later."""

    exit_code = 4


class InternalError(EoforgeError):
    """An eoforge bug: an invariant the code relies on did not hold."""

    exit_code = 70


def exit_code_for(exc: BaseException) -> int:
    """Process exit code for an exception (1 for anything unexpected)."""
    if isinstance(exc, EoforgeError):
        return exc.exit_code
    return 1
