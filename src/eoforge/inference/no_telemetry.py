"""OpenVINO's usage telemetry, declined for every user who has not opted in.

Importing ``openvino`` imports its model converter, whose ``openvino_telemetry`` counts the
import as usage: it writes a client id and a counter under ``~/intel`` and sends an event to
Google Analytics (GA4) from a process it forks off a thread. The scheme is opt-out (on until
someone runs ``opt_in_out --opt_out``; off only where ``CI=true``), so every eoforge process that
predicted on a CPU reported home, and in the warm engine the forked sender (exit 1 offline)
appeared beside the flow runs. A pipeline running on someone's infrastructure on a schedule
should not do that unasked: :func:`decline_openvino_telemetry` makes OpenVINO's consent check
answer "declined" unless the consent file says the user accepted (``opt_in_out --opt_in``),
and eoforge calls it before it imports ``openvino``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["decline_openvino_telemetry"]

_MARK = "_eoforge_declines_unasked"


def decline_openvino_telemetry() -> None:
    """Make ``openvino_telemetry`` treat "no consent file" as declined (idempotent; nothing
    happens where the package is missing or laid out otherwise)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # not installed: openvino uses its own no-op stub
        return
    check = getattr(OptInChecker, "check", None)
    if check is None or getattr(check, _MARK, False):
        return

    def declined_unless_accepted(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = check(self, *args, **kwargs)
        return result if result == ConsentCheckResult.ACCEPTED else ConsentCheckResult.DECLINED

    setattr(declined_unless_accepted, _MARK, True)
    OptInChecker.check = declined_unless_accepted
