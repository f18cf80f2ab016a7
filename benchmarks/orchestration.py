"""Orchestration overhead: the whole pipeline through Prefect vs the same domain calls in plain Python.

Both variants run in this one process, on the same data, each with a fresh store (so nothing is
reused), alternating plain/Prefect for ``--repeats`` rounds; training is bounded by epochs, not
wall clock, so both do the same work. Also measures the per-task overhead of an empty Prefect task.

    python -m benchmarks.orchestration --json benchmarks/results/orchestration.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_STATS = {"min": min, "median": statistics.median, "max": max}


def _spec(epochs: int) -> Any:
    from eoforge.config import RunSpec

    return RunSpec.model_validate(
        {
            "train": {
                "max_epochs": epochs,
                "max_seconds": 3600,
                "rf_n_estimators": 20,
                "rf_train_pixels": 50000,
            }
        }
    )


def _task_overhead(n: int) -> dict[str, float]:
    from prefect import flow, task

    @task(persist_result=False, cache_policy=None)
    def noop(i: int) -> int:
        return i

    @flow
    def many(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            noop(i)
        return time.perf_counter() - t0

    many(2)  # warm up
    prefect_s = many(n)
    t0 = time.perf_counter()
    for i in range(n):
        noop.fn(i)
    plain_s = time.perf_counter() - t0
    return {"tasks": n, "per_task_ms": (prefect_s - plain_s) / n * 1000}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from eoforge.orchestration.flows.pipeline import pipeline_flow
    from eoforge.runs.pipeline import run_plain

    spec = _spec(args.epochs)
    load_before = os.getloadavg()
    overhead = _task_overhead(50)  # also starts Prefect's ephemeral server before timing
    times: dict[str, list[float]] = {"plain": [], "prefect": []}
    with tempfile.TemporaryDirectory(prefix="eoforge-bench-") as td:
        # one discarded round first: imports, first-call JIT and caches warm up for both variants
        run_plain(spec, Path(td) / "warm-plain" / "run", Path(td) / "warm-plain" / "store")
        pipeline_flow(
            spec, str(Path(td) / "warm-prefect" / "run"), str(Path(td) / "warm-prefect" / "store")
        )
        for r in range(args.repeats):
            for variant in ("plain", "prefect"):
                base = Path(td) / f"{variant}-{r}"
                t0 = time.perf_counter()
                if variant == "plain":
                    run_plain(spec, base / "run", base / "store")
                else:
                    pipeline_flow(spec, str(base / "run"), str(base / "store"))
                times[variant].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "ratios": {
            "prefect_over_plain": med["prefect"] / med["plain"],
            # each round runs plain then Prefect back to back: the ratio per round is less
            # exposed to load that changes between rounds
            "per_round": [p / q for p, q in zip(times["prefect"], times["plain"], strict=True)],
        },
        "seconds": {
            **{f"{s}_{k}": f(v) for k, v in times.items() for s, f in _STATS.items()},
            "runs": times,
        },
        "per_task_overhead_ms": overhead["per_task_ms"],
        "config": {"repeats": args.repeats, "epochs": args.epochs, "cpus": os.cpu_count()},
        # other processes share the cores: the 1/5/15-minute load averages before and after
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "command": "python -m benchmarks.orchestration " + " ".join(argv or sys.argv[1:]),
    }
    table = Table(title="eoforge pipeline: Prefect vs plain Python (same process, fresh stores)")
    for col in ("variant", "median s", "runs (s)"):
        table.add_column(col)
    for k in ("plain", "prefect"):
        table.add_row(k, f"{med[k]:.1f}", ", ".join(f"{t:.1f}" for t in times[k]))
    table.add_row("ratio", f"{result['ratios']['prefect_over_plain']:.3f}", "prefect / plain")
    table.add_row(
        "per-task overhead", f"{overhead['per_task_ms']:.1f} ms", "empty task, thread runner"
    )
    table.add_row(
        "load average",
        " ".join(f"{x:.1f}" for x in result["load_average"]["after"]),
        "1/5/15 min, after",
    )
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
