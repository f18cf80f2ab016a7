"""Which stage a run is in, for whoever shows it (the command line's progress display).

Runs call :func:`stage` around each stage, in the process that runs the pipeline (plain or the
Prefect flow run in-process); a display registers with :func:`listening`. Nothing listens by
default, so stages cost nothing extra.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["STAGES", "StageListener", "listening", "stage"]

#: The pipeline's stages in order.
STAGES = ("search", "ingest", "chips", "train", "baseline", "infer", "evaluate", "track", "report")

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
