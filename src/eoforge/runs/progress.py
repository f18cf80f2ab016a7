"""Which stage a run is in, for whoever shows it (the command line's progress display).

Runs call :func:`stage` around each stage, in the process that runs the pipeline (plain or the
Prefect flow run in-process); a display registers with :func:`listening`. Nothing listens by
default, so stages cost nothing extra.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EMBED_STAGES", "STAGES", "StageListener", "listening", "stage", "timed_stage"]

#: The pipeline's stages in order.
STAGES = ("search", "ingest", "chips", "train", "baseline", "infer", "evaluate", "track", "report")
#: An embed run's stages in order.
EMBED_STAGES = ("search", "ingest", "encoder", "field", "classify", "clusters", "similarity",
                "evaluate", "report")  # fmt: skip

#: Called with (stage name, seconds): seconds is None when the stage starts.
StageListener = Callable[[str, float | None], None]

_listeners: list[StageListener] = []


@contextlib.contextmanager
def listening(listener: StageListener) -> Iterator[None]:
    """Send stage starts and ends to ``listener`` while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Announce stage ``name`` to the listeners: started now, finished (with its seconds) when
    the block ends without an error."""
    for listener in tuple(_listeners):
        listener(name, None)
    t0 = time.perf_counter()
    yield
    for listener in tuple(_listeners):
        listener(name, time.perf_counter() - t0)


def timed_stage(
    name: str, fn: Callable[[], dict[str, Any]], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Run stage ``name`` (announced with :func:`stage`), add its ``stage_seconds`` to its
    result and record the result in ``results``; return it."""
    t0 = time.perf_counter()
    with stage(name):
        res = fn()
    res["stage_seconds"] = time.perf_counter() - t0
    results[name] = res
    return res
