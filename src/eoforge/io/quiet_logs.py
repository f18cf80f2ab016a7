"""One clean paragraph for bad input in orchestrated runs too: the orchestrator's own ERROR
records about an error that retrying cannot fix (bad input, a broken data contract) go to a log
file with their traceback, not to the console, where the CLI prints the error once.

Works on the standard :mod:`logging` records of the orchestrator's loggers (``prefect.*``), so
eoforge needs no import of Prefect; records sent to the Prefect API (the UI) are untouched.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from eoforge.errors import ContractViolation, InputError

__all__ = ["final_errors_to_file", "is_final_error_record"]

_FINAL = (InputError, ContractViolation)
_FINAL_NAMES = tuple(f"exception {c.__name__}" for c in _FINAL) + tuple(
    f"{c.__name__}(" for c in _FINAL
)


def _chain_has_final(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _FINAL):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def is_final_error_record(record: logging.LogRecord) -> bool:
    """Whether a log record reports an error eoforge will print itself (bad input, contract)."""
    if record.levelno < logging.ERROR:
        return False
    if record.exc_info and _chain_has_final(record.exc_info[1]):
        return True
    message = record.getMessage()
    return any(name in message for name in _FINAL_NAMES)


class _ToFile(logging.Filter):
    """Console filter: final-error records are written to ``path`` instead."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file: logging.FileHandler | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_final_error_record(record):
            return True
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = logging.FileHandler(self.path, delay=False)
            self._file.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s")
            )
        self._file.handle(record)
        return False


def final_errors_to_file(log_dir: Path, logger_prefix: str = "prefect") -> Path:
    """Route final-error records away from the console handlers (on the root logger and on
    ``logger_prefix.*``) into a log file.

    Returns:
        The log file's path (created only when a record is written to it).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(log_dir) / f"run-{stamp}-{os.getpid()}.log"
    flt = _ToFile(path)
    loggers = [logging.getLogger()]  # the orchestrator's console handler may sit on the root
    loggers += [
        logging.getLogger(n)
        for n in list(logging.root.manager.loggerDict)
        if n == logger_prefix or n.startswith(f"{logger_prefix}.")
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.addFilter(flt)
    return path
