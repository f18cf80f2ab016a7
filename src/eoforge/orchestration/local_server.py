"""Defaults for the temporary Prefect server a local run starts (no ``PREFECT_API_URL``).

Prefect starts it in a subprocess and waits ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
(20 s by default) for its health check. Its first start on a machine creates and migrates the
SQLite database under ``PREFECT_HOME``: 18-20 s on an idle 2-core machine (measured, session
12), so ``eoforge demo`` on a fresh install failed about half the time with Prefect's bare
``RuntimeError``. eoforge waits longer, and turns a start that still fails into an error that
says what to do. Imports nothing from Prefect: the command line applies these before Prefect
reads its settings.
"""

from __future__ import annotations

import os

from eoforge.errors import TransientError

__all__ = ["LOCAL_DEFAULTS", "STARTUP_TIMEOUT_VAR", "apply_local_defaults", "server_start_error"]

STARTUP_TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

#: Set unless the user set them: the temporary server does not phone home (air-gapped machines
#: logged an ERROR per run for the failed telemetry call; set it to true to opt back in), and its
#: first start, which migrates a new database, has 2 minutes instead of 20 s.
LOCAL_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    STARTUP_TIMEOUT_VAR: "120",
}

#: The message of Prefect's ``RuntimeError`` when its temporary server does not answer in time.
_PREFECT_MESSAGE = "attempting to connect to ephemeral Prefect API server"


def apply_local_defaults() -> None:
    """Set :data:`LOCAL_DEFAULTS` in ``os.environ`` where the user has not set them."""
    for name, value in LOCAL_DEFAULTS.items():
        os.environ.setdefault(name, value)


def server_start_error(exc: BaseException) -> TransientError | None:
    """The error to show for ``exc`` if it is Prefect's failure to start its temporary
    server, else None."""
    if not isinstance(exc, RuntimeError) or _PREFECT_MESSAGE not in str(exc):
        return None
    waited = os.environ.get(STARTUP_TIMEOUT_VAR, "20")
    return TransientError(
        f"the temporary Prefect server eoforge starts for a local run did not answer within "
        f"{waited} s ({STARTUP_TIMEOUT_VAR}). Its first start on a machine migrates a new "
        "database and is slow on a busy machine: run again, raise that variable, point "
        "PREFECT_API_URL at a running server (`prefect server start`), or pass --plain to run "
        "without Prefect."
    )
