"""GPU benchmark: training, chip reads and whole-scene inference on a CUDA GPU, in one process.

    python -m benchmarks.gpu prepare --out .gpu            # here, on any machine (needs GDAL)
    python -m benchmarks.gpu measure --inputs .gpu --json OUT [--budget-s 330]

``benchmarks/gpu_check.sh`` runs both halves for a lent GPU machine: ``prepare`` builds what
needs the geospatial stack (GDAL, odc-stac) on this machine, and ``measure`` needs only torch,
zarr, pydantic, shapely and cupy, which the GPU machine has or gets from carried wheels.

``prepare`` writes into ``--out``: the real chips of the bundled sample (the pipeline's chips
stage, default chip spec), the real 512 x 512 scene as ``scene.npy``, and a model directory of
the product's default architecture (``train_model`` for one epoch on those chips: its weights
do not matter for speed, its shape does).

``measure`` reports, side by side in one run:

1. ``training``: optimiser steps/s of :func:`eoforge.training.train.train_model` on CUDA in fp32
   and with AMP (bf16), at the ``full`` preset's width, with NVML busy % during each, and the
   ratio (``ratios.amp_vs_fp32_steps``);
2. ``chip_reads``: the whole train split from Zarr into GPU memory by the route eoforge picks
   (cupy: Zarr GPU buffers, DLPack into torch) vs a host read then a copy to the device, MB/s;
3. ``inference``: whole-scene inference through :class:`eoforge.inference.torch_session.TorchSession`
   (the predictor of ``eoforge.inference.predict``, windows blended on the CPU) on a large scene
   tiled from the real one: Mpx/s and NVML busy %, pipelined vs serial, fp32 vs bf16, at the
   product's batch and a larger one; the model alone on device-resident batches (no blending,
   no copies) as the GPU's own rate; the FLOP-based limit (the model's FLOPs per pixel over the
   measured bf16 matrix-product peak and over the H200's datasheet peak);
4. ``full_preset``: the ``full`` training preset end to end on the GPU (wall time, epochs, val
   mIoU), under what is left of ``--budget-s``.

Without a CUDA GPU ``measure`` still runs the CPU parts and lists every GPU figure under
``missing`` (and says so loudly), so the script can be rehearsed on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._scenes import NullWriter, TiledScene
from benchmarks._timing import seconds_summary
from eoforge.compute import gpu
from eoforge.config import TRAIN_PRESETS, InferSpec, TrainSpec
from eoforge.export.torch_session import open_torch_session
from eoforge.inference.predict import predict_raster
from eoforge.inference.torch_session import TorchSession
from eoforge.training.files import read_model_config
from eoforge.training.train import train_model

#: H200 SXM datasheet peaks, dense (no sparsity), TFLOP/s.
H200_PEAK_TFLOPS = {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}


# --------------------------------------------------------------------------- prepare


def prepare(out: Path) -> dict[str, Any]:
    """Chips, scene and a model directory for ``measure`` (needs the geospatial stack)."""
    from benchmarks.inference import read_scene
    from benchmarks.training import build_chip_store

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="eoforge-gpu-prepare-"))
    try:
        chips = build_chip_store_into(build_chip_store, work, out)
        np.save(out / "scene.npy", read_scene())
        spec = TrainSpec.model_validate({"max_epochs": 1, "threads": 2})
        model = train_model(chips, spec, work / "model", progress=False).model_dir
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        shutil.copytree(model, out / "model")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir())}


def build_chip_store_into(build: Callable[[Path, Path], Path], work: Path, out: Path) -> Path:
    from eoforge.config import BUNDLED_CATALOG

    chips = build(BUNDLED_CATALOG, work)
    target = out / "chips.zarr"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(chips, target)
    # training reads train and val; the test split would only add weight to the carried tree
    shutil.rmtree(target / "test")
    return target


# --------------------------------------------------------------------------- measure


#: ``measure --rehearse`` runs the GPU code paths on the CPU (small sizes, fp32 only) so that
#: the script is proven before device minutes are spent; its figures are not GPU figures.
_REHEARSE = False


def _cuda() -> bool:
    return _REHEARSE or (gpu.cuda_available() and torch.cuda.is_available())


def _device() -> str:
    return "cpu" if _REHEARSE else "cuda"


def _sync() -> None:
    if not _REHEARSE:
        torch.cuda.synchronize()


def _precisions() -> tuple[bool, ...]:
    return (False,) if _REHEARSE else (False, True)


def _machine() -> dict[str, Any]:
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_devices": gpu.cuda_device_count(),
        "chip_route": gpu.chip_read_route(),
        "commit": os.environ.get("EOFORGE_COMMIT"),  # the device gets files, not .git
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "device_name": props.name,
                "device_memory_gb": props.total_memory / 1e9,
                "multiprocessors": props.multi_processor_count,
                "torch_cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except ImportError:
        info["cupy"] = None
    return info


def _step_rate(chips: Path, spec: TrainSpec, out: Path) -> dict[str, Any]:
    """:func:`benchmarks.training._step_rate` with NVML sampling the GPU meanwhile."""
    from benchmarks.training import _step_rate as step_rate

    with gpu.UtilisationSampler() as sampler:
        run = step_rate(chips, spec, out)
    return {**run, "gpu_utilisation": sampler.summary(skip_s=1.0)}


def bench_training(chips: Path, work: Path, epochs: int) -> dict[str, Any]:
    base = TRAIN_PRESETS["full"]
    spec = base.model_copy(
        update={"max_epochs": epochs, "max_seconds": 1e6, "patience": epochs + 1}
    )
    if not _cuda():
        return {"measured": False}
    cuda = spec.model_copy(update={"device": _device()})
    runs = {"cuda_fp32": _step_rate(chips, cuda.model_copy(update={"amp": False}), work / "f")}
    if not _REHEARSE:
        runs["cuda_amp"] = _step_rate(chips, cuda, work / "a")
    return {
        "measured": True,
        "spec": {"base_channels": spec.base_channels, "batch_size": spec.batch_size},
        "epochs": epochs,
        "runs": runs,
    }


def bench_reads(chips: Path, repeats: int) -> dict[str, Any]:
    from benchmarks.training import bench_reads as reads

    return reads(chips, repeats)


def _matmul_peak_tflops() -> float:
    """Measured bf16 matrix-product rate (8192^3), the GPU's practical tensor-core peak."""
    n = 512 if _REHEARSE else 8192
    a = torch.randn(n, n, device=_device(), dtype=torch.bfloat16)
    b = torch.randn(n, n, device=_device(), dtype=torch.bfloat16)

    def mm() -> None:
        for _ in range(10):
            a @ b
        _sync()

    t = seconds_summary(mm, 3, warmup=2)["median"]
    return 2 * n**3 * 10 / t / 1e12


def _model_only(session: TorchSession, channels: int, window: int, batch: int) -> dict[str, Any]:
    """The network on device-resident batches: no host copies, no blending."""
    x = torch.rand(batch, channels, window, window, device=_device()) * 4000
    if session.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(_device(), torch.bfloat16, enabled=session.amp)

    def run() -> None:
        with torch.inference_mode(), amp:
            for _ in range(10):
                session.model(x)
        _sync()

    t = seconds_summary(run, 5, warmup=2)
    mpx = 10 * batch * window * window / 1e6
    return {"batch": batch, "mpx_per_s": mpx / t["median"], "seconds_per_10_batches": t}


def _steady(
    session: TorchSession, scene: TiledScene, spec: InferSpec, seconds: float
) -> dict[str, Any]:
    """Whole-scene inference back to back for ``seconds``, NVML sampling the GPU."""
    warm = min(1024, scene.shape[1])
    predict_raster(session, TiledScene(scene.tile, warm, warm), spec, NullWriter())
    mpx = scene.shape[1] * scene.shape[2] / 1e6
    runs: list[float] = []
    with gpu.UtilisationSampler() as sampler:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or not runs:
            t0 = time.perf_counter()
            predict_raster(session, scene, spec, NullWriter())
            runs.append(time.perf_counter() - t0)
    rates = [mpx / t for t in runs]
    return {
        "scenes": len(runs),
        "mpx_per_s": statistics.median(rates),
        "mpx_per_s_min": min(rates),
        "mpx_per_s_max": max(rates),
        "gpu_utilisation": sampler.summary(skip_s=0.5),
    }


def bench_inference(
    model_dir: Path, scene: np.ndarray, size: int, seconds: float
) -> dict[str, Any]:
    from benchmarks._limits import flop_per_pixel

    config = read_model_config(model_dir)
    channels = int(config["architecture"]["in_channels"])
    default = InferSpec()
    cpu_model = open_torch_session(model_dir, "cpu").model
    flops = flop_per_pixel(cpu_model, channels, default.window)["total"]
    section: dict[str, Any] = {
        "model": {
            "base_channels": config["architecture"].get("base_channels"),
            "in_channels": channels,
            "flop_per_pixel": flops,
        },
        "scene": {"tile": list(scene.shape), "size": [size, size], "mpx": size * size / 1e6},
        "window": default.window,
        "overlap": default.overlap,
    }
    if not _cuda():
        section["measured"] = False
        return section
    large = TiledScene(scene, size, size)
    peak = _matmul_peak_tflops()
    section["limits"] = {
        "bf16_matmul_tflops_measured": peak,
        "h200_datasheet_tflops": H200_PEAK_TFLOPS,
        "mpx_per_s_bf16_measured_peak": peak * 1e12 / flops / 1e6,
        "mpx_per_s_bf16_datasheet": H200_PEAK_TFLOPS["bf16"] * 1e12 / flops / 1e6,
        "mpx_per_s_tf32_datasheet": H200_PEAK_TFLOPS["tf32"] * 1e12 / flops / 1e6,
    }
    runs: dict[str, Any] = {}
    model_only: dict[str, Any] = {}
    for amp in _precisions():
        session = open_torch_session(model_dir, _device(), amp=amp)
        precision = "bf16" if amp else "fp32"
        edge = 64 if _REHEARSE else default.window
        model_only[precision] = [
            _model_only(session, channels, edge, b) for b in (default.batch_size, 16)
        ]
        for batch in (default.batch_size, 16):
            for pipelined in (True, False):
                spec = default.model_copy(update={"batch_size": batch, "pipelined": pipelined})
                key = f"{precision}_batch{batch}_{'pipelined' if pipelined else 'serial'}"
                runs[key] = _steady(session, large, spec, seconds)
        del session
        if not _REHEARSE:
            torch.cuda.empty_cache()
    # the host's own ceiling: the same predictor with a model that costs nothing (a 1x1 conv)
    free = TorchSession(
        torch.nn.Conv2d(channels, int(config["architecture"]["num_classes"]), 1),
        torch.device(_device()),
        in_channels=channels,
    )
    host_bound = {
        key: _steady(free, large, default.model_copy(update={"pipelined": pipelined}), seconds)
        for key, pipelined in (("pipelined", True), ("serial", False))
    }
    best = max(runs.values(), key=lambda r: r["mpx_per_s"])
    top = "bf16" if "bf16" in model_only else "fp32"
    section.update(
        {
            "measured": True,
            "whole_scene": runs,
            "model_only": model_only,
            "host_bound_free_model": host_bound,
            "ratios": {
                "best_whole_scene_vs_host_bound": best["mpx_per_s"]
                / max(r["mpx_per_s"] for r in host_bound.values()),
                "pipelined_vs_serial_fp32_default_batch": runs[
                    f"fp32_batch{default.batch_size}_pipelined"
                ]["mpx_per_s"]
                / runs[f"fp32_batch{default.batch_size}_serial"]["mpx_per_s"],
                "bf16_vs_fp32_model_only_batch16": model_only[top][1]["mpx_per_s"]
                / model_only["fp32"][1]["mpx_per_s"],
                "best_whole_scene_vs_model_only_bf16": best["mpx_per_s"]
                / model_only[top][1]["mpx_per_s"],
                "model_only_bf16_vs_measured_peak_limit": model_only[top][1]["mpx_per_s"]
                / section["limits"]["mpx_per_s_bf16_measured_peak"],
            },
        }
    )
    return section


def bench_full_preset(chips: Path, work: Path, budget_s: float) -> dict[str, Any]:
    if not _cuda():
        return {"measured": False}
    spec = TRAIN_PRESETS["full"]
    capped = budget_s < spec.max_seconds
    if capped:
        spec = spec.model_copy(update={"max_seconds": max(budget_s, 10.0)})
    t0 = time.perf_counter()
    with gpu.UtilisationSampler() as sampler:
        result = train_model(chips, spec.model_copy(update={"device": _device()}), work, False)
    return {
        "measured": True,
        "seconds": time.perf_counter() - t0,
        "train_seconds": result.seconds,
        "epochs_run": result.epochs_run,
        "max_epochs": spec.max_epochs,
        "max_seconds": spec.max_seconds,
        "capped_by_budget": capped,
        "best_epoch": result.best_epoch,
        "best_val_miou": result.best_val_miou,
        "steps_per_s": result.steps_per_second,
        "amp_dtype": result.amp_dtype,
        "chip_route": result.chip_route,
        "gpu_utilisation": sampler.summary(skip_s=1.0),
    }


#: What ``measure --sections`` may name, in the order they run.
SECTIONS = ("chip_reads", "training", "inference", "full_preset")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sections = set(args.sections.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:  # before anything is loaded or a work folder made
        raise SystemExit(
            f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    started = time.perf_counter()
    inputs = Path(args.inputs)
    chips, model_dir = inputs / "chips.zarr", inputs / "model"
    scene = np.load(inputs / "scene.npy")
    work = Path(tempfile.mkdtemp(prefix="eoforge-bench-gpu-"))
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "rehearsal_on_cpu": _REHEARSE,
        "machine": _machine(),
    }
    timings: dict[str, float] = {}
    try:
        for name, fn in (
            ("chip_reads", lambda: bench_reads(chips, args.repeats)),
            ("training", lambda: bench_training(chips, work / "train", args.epochs)),
            (
                "inference",
                lambda: bench_inference(model_dir, scene, args.scene_size, args.seconds),
            ),
        ):
            if name not in sections:
                continue
            t0 = time.perf_counter()
            result[name] = fn()
            timings[name] = time.perf_counter() - t0
            _dump(result, args.json)  # what is measured survives a later failure
        if "full_preset" in sections:
            left = args.budget_s - (time.perf_counter() - started)
            t0 = time.perf_counter()
            result["full_preset"] = bench_full_preset(chips, work / "full", left)
            timings["full_preset"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = timings
    missing = [
        k
        for k in ("training", "inference", "full_preset")
        if k in sections and not result[k]["measured"]
    ]
    if "chip_reads" in sections and "cupy" not in result["chip_reads"]["routes"]:
        missing.append("chip_reads.routes.cupy (no cupy or no GPU)")
    result["missing"] = missing
    return result


def _dump(result: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build chips, scene and model (needs GDAL)")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    m = sub.add_parser("measure", help="measure on this machine's GPU")
    m.add_argument("--inputs", type=Path, default=Path(".gpu"))
    m.add_argument("--json", default=None)
    m.add_argument("--epochs", type=int, default=3, help="epochs per step-rate run")
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--scene-size", type=int, default=4096, help="tiled scene edge, px")
    m.add_argument("--seconds", type=float, default=6.0, help="per steady-state inference run")
    m.add_argument("--budget-s", type=float, default=330.0, help="caps the full preset's time")
    m.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated sections to measure (default: all)",
    )
    m.add_argument(
        "--rehearse", action="store_true", help="run the GPU code paths on the CPU (not figures)"
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out), indent=2))
        return 0
    global _REHEARSE
    _REHEARSE = args.rehearse
    result = measure(args)
    _dump(result, args.json)
    print(json.dumps({k: result[k] for k in ("machine", "seconds", "missing")}, indent=2))
    if result["missing"]:
        print(f"!!! GPU figures NOT measured here: {result['missing']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
