"""Inference under a cgroup CPU quota and in Dask workers: threads sized to the CPUs a process
may use vs to the cores it sees.

    python -m benchmarks.cpu_quota --json OUT --model-dir DIR [--quota 1] [--rounds 4]

A container limited with ``--cpus`` (or a Kubernetes CPU limit) sees all of its host's cores;
before :mod:`eoforge.compute.cpus`, OpenVINO and ONNX Runtime sized their pools to those cores
and the kernel throttled the cgroup in turn. This makes a child cgroup with a CPU quota of
``--quota`` CPUs (cgroup v1 ``cpu`` controller or v2 ``cpu.max``; needs root), and runs the
whole-scene inference of the bundled 512 px scene (``predict_scene``, product defaults) in child
processes joined to it: ``threads`` = the CPUs the machine shows (what the runtimes chose before)
vs eoforge's default (the quota), for OpenVINO and ONNX Runtime, alternating ``--rounds``
times (12 timed scenes each after 2 warm-ups). Medians, min and max per contender, and
``ratios.<backend>_quota_sized_vs_visible`` (time of the visible-core pool / time of the
quota-sized one: > 1 when sizing to the quota is faster). The cgroup is removed afterwards;
without root this part is skipped.

``dask_workers``: two LocalCluster worker processes (``DaskSpec(n_workers=2)``, one thread
each) predicting 20 scenes each at once, with each worker's CPU share (eoforge's default since
session 11: ``EOFORGE_CPUS`` = its threads, OpenVINO unpinned below the cores it sees) vs
``EOFORGE_CPUS`` = the visible CPUs (every worker's pool on every core, as before), alternating
``--rounds`` times; scenes/s of the pair, ``ratios.dask_workers_share_vs_visible``.
``--model-dir`` is a trained model directory (e.g. the demo's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

_CHILD = """
import sys, time, json
sys.path.insert(0, {root!r})
import numpy as np
import rasterio
from eoforge.config import BUNDLED_CATALOG, InferSpec
from eoforge.export.torch_session import open_predictor
from eoforge.inference.predict import predict_scene
folder = BUNDLED_CATALOG / {item!r}
bands = []
for name in ("B02", "B03", "B04", "B08"):
    with rasterio.open(folder / f"{{name}}.tif") as src:
        bands.append(src.read(1))
scene = np.stack(bands)
threads = None if sys.argv[2] == "default" else int(sys.argv[2])
spec = InferSpec(threads=threads, backend=sys.argv[1])
session = open_predictor(sys.argv[3], spec)
for _ in range(2):
    predict_scene(session, scene, spec)
times = []
for _ in range(12):
    t = time.perf_counter()
    predict_scene(session, scene, spec)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def _cgroup(quota: float) -> tuple[Path, Path]:
    """A fresh child cgroup with ``quota`` CPUs; (its folder, its procs file)."""
    v1 = Path("/sys/fs/cgroup/cpu")
    period = 100_000
    name = f"eoforge-bench-{uuid.uuid4().hex[:8]}"
    if (v1 / "cpu.cfs_quota_us").is_file():
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(round(quota * period)))
    else:
        group = Path("/sys/fs/cgroup") / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{round(quota * period)} {period}")
    return group, group / "cgroup.procs"


def _run(procs: Path, backend: str, threads: str, model: Path) -> list[float]:
    root = str(Path(__file__).resolve().parent.parent)
    from benchmarks.inference import SCENE_ITEM

    code = _CHILD.format(root=root, item=SCENE_ITEM)
    env = {k: v for k, v in os.environ.items() if k != "EOFORGE_CPUS"}
    out = subprocess.run(
        [
            "sh",
            "-c",
            f'echo $$ > {procs} && exec "$0" -c "$@"',
            sys.executable,
            code,
            backend,
            threads,
            str(model),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    times: list[float] = json.loads(out.stdout.strip().splitlines()[-1])
    return times


def _worker_scenes(model: str, scenes: int) -> float:
    """Seconds one Dask worker takes for ``scenes`` whole-scene predictions (after a warm-up)."""
    import time

    import numpy as np
    import rasterio

    from benchmarks.inference import BAND_FILES, SCENE_ITEM
    from eoforge.config import BUNDLED_CATALOG, InferSpec
    from eoforge.export.torch_session import open_predictor
    from eoforge.inference.predict import predict_scene

    bands = []
    for name in BAND_FILES:
        with rasterio.open(BUNDLED_CATALOG / SCENE_ITEM / f"{name}.tif") as src:
            bands.append(src.read(1))
    scene = np.stack(bands)
    spec = InferSpec()
    session = open_predictor(Path(model), spec)
    predict_scene(session, scene, spec)
    t0 = time.perf_counter()
    for _ in range(scenes):
        predict_scene(session, scene, spec)
    return time.perf_counter() - t0


def _dask_workers(model: Path, rounds: int, scenes: int = 20) -> dict[str, Any]:
    import time

    from distributed import Client, LocalCluster

    from eoforge.compute.cluster import DaskSpec

    visible = str(os.cpu_count() or 1)
    rates: dict[str, list[float]] = {"share": [], "visible": []}
    for _ in range(rounds):
        for mode in rates:
            kwargs = DaskSpec(n_workers=2, threads_per_worker=1).local_cluster_kwargs()
            if mode == "visible":
                kwargs["env"] = {"EOFORGE_CPUS": visible}
            with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
                client.gather(client.map(_worker_scenes, [str(model)] * 2, [1, 1], pure=False))
                t0 = time.perf_counter()
                jobs = client.map(_worker_scenes, [str(model)] * 2, [scenes] * 2, pure=False)
                client.gather(jobs)
                rates[mode].append(2 * scenes / (time.perf_counter() - t0))
    summary = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
        for k, v in rates.items()
    }
    return {
        "scenes_per_s": summary,
        "share_vs_visible": summary["share"]["median"] / summary["visible"]["median"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the Dask workers, and every contender in the quota'd cgroup (as root); the
    result dict."""
    model = Path(args.model_dir) / "model.onnx"
    if not model.is_file():
        raise SystemExit(f"--model-dir {args.model_dir}: no model.onnx there; train one first.")
    visible = str(os.cpu_count() or 1)
    load_start = list(os.getloadavg())
    workers = _dask_workers(model, args.rounds)
    base: dict[str, Any] = {
        "benchmark": "cpu_quota",
        "dask_workers": workers,
        "ratios": {"dask_workers_share_vs_visible": workers["share_vs_visible"]},
    }
    if os.geteuid() != 0:
        base["quota"] = "skipped: making a cgroup needs root"
        return base
    group, procs = _cgroup(args.quota)
    times: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for backend in ("openvino", "onnxruntime"):
                for threads in (visible, "default"):
                    key = f"{backend}_{'visible' if threads == visible else 'quota_sized'}"
                    times.setdefault(key, []).extend(_run(procs, backend, threads, model))
    finally:
        group.rmdir()
    summary = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
        for k, v in times.items()
    }
    ratios = {
        f"{b}_quota_sized_vs_visible": summary[f"{b}_visible"]["median"]
        / summary[f"{b}_quota_sized"]["median"]
        for b in ("openvino", "onnxruntime")
    }
    return {
        **base,
        "config": {
            "quota_cpus": args.quota,
            "visible_cpus": int(visible),
            "model": str(model),
            "scene": "bundled 512 px scene, predict_scene, product defaults",
        },
        "seconds_per_scene": summary,
        "ratios": {**base["ratios"], **ratios},
        "machine": {
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m benchmarks.cpu_quota``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quota", type=float, default=1.0, help="CPUs of the cgroup quota")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args)
    for k, v in result["dask_workers"]["scenes_per_s"].items():
        print(f"  dask workers, {k:8s} median {v['median']:6.2f} scenes/s")
    for k, v in result.get("seconds_per_scene", {}).items():
        print(
            f"  {k:28s} median {v['median'] * 1e3:7.1f} ms  "
            f"min {v['min'] * 1e3:7.1f}  max {v['max'] * 1e3:7.1f}"
        )
    for k, v in result["ratios"].items():
        print(f"  {k}: {v:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
