"""Host-side work of the predictor (softmax and blend weights, argmax, uncertainty) on all cores.

Between two model runs the predictor's numpy work ran on one thread while ONNX Runtime's
intra-op threads slept: on the product's 512 px windows that was about a seventh of a scene's
time on this project's 2-core machines (``benchmarks/inference.py``, ``model_only_vs_whole_scene``).
numpy's element-wise ufuncs and reductions release the GIL, so the same calls over disjoint
row bands of an array run in parallel in threads. :func:`over_row_bands` does that with one
small pool per process (created on first use, and again in a forked child, whose copy of the
parent's threads would not run).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

from eoforge.compute.cpus import usable_cpus

__all__ = ["MIN_BAND_ROWS", "host_threads", "over_row_bands"]

#: Fewer rows than this per band are not worth a thread hand-off.
MIN_BAND_ROWS = 32

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()  # the pipelined predictor calls in from two threads


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def host_threads() -> int:
    """Threads for the host work: the CPUs this process may use, at most 4 (the work is a few
    passes over memory per batch; more threads only share the memory bandwidth)."""
    return max(1, min(4, usable_cpus()))


def over_row_bands(work: Callable[[slice], None], rows: int, min_rows: int = MIN_BAND_ROWS) -> None:
    """Call ``work(rows_slice)`` over contiguous bands of ``range(rows)``, in parallel, each
    band at least ``min_rows`` long (one call, in this thread, when ``rows`` is short).

    ``work`` must only touch its own rows (of arrays that are not resized meanwhile). Its
    exceptions are raised here, the first band's first.
    """
    global _pool
    parts = min(host_threads(), rows // max(1, min_rows))
    if parts <= 1:
        work(slice(0, rows))
        return
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(host_threads(), thread_name_prefix="eoforge-host")
        pool = _pool
    bounds = [rows * i // parts for i in range(parts + 1)]
    bands = [slice(a, b) for a, b in pairwise(bounds)]
    futures = [pool.submit(work, band) for band in bands[1:]]
    try:
        work(bands[0])  # the caller's thread takes the first band
    finally:
        errors = [f.exception() for f in futures]  # waits: no band runs on after we return
    for error in errors:
        if error is not None:
            raise error
