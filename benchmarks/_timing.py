"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return seconds_summary(fn, repeats, warmup)["median"]


def seconds_summary(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed
    calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Wall times of several contenders measured round-robin (side by side under the same load).

    Returns:
        name -> {"median", "min", "max"} wall seconds over ``repeats`` rounds, and
        ``"cpu_median"``: the median CPU seconds of this process (all its threads) per call,
        which other processes competing for the cores inflate far less than wall time, and
        where ``getrusage`` exists, ``"minor_faults_median"``: the median minor page faults of
        this process per call (pages mapped afresh and zeroed by the kernel).
    """
    try:
        import resource
    except ImportError:  # not on Unix: no fault counts
        resource = None  # type: ignore[assignment]

    def minor_faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    faults: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            f0 = minor_faults()
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(minor_faults() - f0)
    return {
        name: {
            "median": statistics.median(t),
            "min": min(t),
            "max": max(t),
            "cpu_median": statistics.median(cpu[name]),
            **({"minor_faults_median": float(statistics.median(faults[name]))} if resource else {}),
        }
        for name, t in times.items()
    }
