"""Final-error records leave the console for a log file; everything else stays."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from eoforge.errors import InputError, TransientError
from eoforge.io.quiet_logs import final_errors_to_file, is_final_error_record


def _record(level: int, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("prefect.flow_runs", level, __file__, 1, msg, (), info)


def test_which_records_are_final_errors() -> None:
    try:
        try:
            raise InputError("bad bbox")
        except InputError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        wrapped = exc
    assert is_final_error_record(_record(logging.ERROR, "flow failed", wrapped))
    assert is_final_error_record(
        _record(
            logging.ERROR,
            "Finished in state Failed('Task run encountered an exception InputError: x')",
        )
    )
    assert not is_final_error_record(_record(logging.ERROR, "boom", TransientError("503")))
    assert not is_final_error_record(_record(logging.INFO, "x", InputError("bad")))


def test_console_handler_sends_them_to_the_log_file(tmp_path: Path) -> None:
    logger = logging.getLogger("prefect.eoforge-test")
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    logger.addHandler(console)
    try:
        log = final_errors_to_file(tmp_path / "logs")
        try:
            raise InputError("bad bbox")
        except InputError as exc:
            raised = exc
        assert console.filter(_record(logging.ERROR, "boom", raised)) is False
        assert console.filter(_record(logging.ERROR, "other failure")) is True
        assert "bad bbox" in log.read_text() and "Traceback" in log.read_text()
    finally:
        logger.removeHandler(console)
