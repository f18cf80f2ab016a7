"""Training benchmark: the training step rate on this machine's devices, and the chip read rate
from Zarr into the training device.

    python -m benchmarks.training --json OUT [--catalog src/eoforge/stac/sample/s2-l2a-mini]
        [--epochs 2] [--base-channels 32] [--batch 16] [--repeats 5] [--preset full]

Measured side by side in one process run on the real chips of ``--catalog`` (cube written with
``eoforge.cube.build.write_cube`` and cut by ``eoforge.chips.cut.build_chips`` with the default chip spec,
neither timed):

1. **Step rate.** :func:`eoforge.training.train.train_model` for ``--epochs`` epochs (the ``full``
   preset's width unless ``--base-channels``), reporting optimiser steps per second of training
   time (validation excluded), i.e. ``TrainResult.steps_per_second``:
   - on the CPU in fp32 (always);
   - on CUDA in fp32 and with AMP (bf16, or fp16 with loss scaling) where a GPU is usable,
     sampling the GPU's busy % with NVML (``eoforge.compute.gpu.UtilisationSampler``) during the AMP run.
2. **Chip reads.** :func:`eoforge.compute.gpu.read_chips_to_gpu` of the whole train split, medians of
   ``--repeats``: the CPU path (zarr host read into torch CPU tensors) always; on a GPU also the
   host read + torch copy to the device (``torch`` route) and the kvikio / cupy route (zarr GPU
   buffers, DLPack to torch), in MB/s of chip data.
3. With ``--preset full`` on a GPU: the whole ``full`` training configuration on the GPU
   (wall time and validation mIoU), the number issue 9 asks for when a GPU is lent.

What could not be measured here (no GPU, no GPU packages) is listed under ``missing``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import zarr

from benchmarks._timing import median_seconds
from benchmarks.chips import BANDS, load_cube
from eoforge.chips.cut import build_chips
from eoforge.compute import gpu
from eoforge.config import BUNDLED_CATALOG, TRAIN_PRESETS, ChipSpec, LabelSpec, TrainSpec
from eoforge.training.train import TrainResult, train_model


def build_chip_store(catalog: Path, work: Path) -> Path:
    """The real chips of ``catalog`` (default chip spec), as the pipeline's chips stage cuts them."""
    cube, _ = load_cube(catalog, work / "cube.zarr")
    chips = work / "chips.zarr"
    build_chips(cube, chips, ChipSpec.model_validate({}), LabelSpec(), BANDS)
    return chips


def _train_bytes(chips: Path) -> int:
    group = zarr.open_group(str(chips), mode="r")
    x, y = group["train/x"], group["train/y"]
    assert isinstance(x, zarr.Array) and isinstance(y, zarr.Array)
    return int(x.nbytes + y.nbytes)


def _step_rate(chips: Path, spec: TrainSpec, out: Path) -> dict[str, Any]:
    result: TrainResult = train_model(chips, spec, out, progress=False)
    steps = sum(int(h["steps"]) for h in result.history)
    return {
        "device": result.device,
        "amp_dtype": result.amp_dtype,
        "chip_route": result.chip_route,
        "epochs": result.epochs_run,
        "steps": steps,
        "steps_per_s": result.steps_per_second,
        "chips_per_s": result.steps_per_second * spec.batch_size,
        "seconds": result.seconds,
    }


def bench_steps(chips: Path, spec: TrainSpec, work: Path) -> dict[str, Any]:
    """Step rate on the CPU (fp32) and, with a GPU, CUDA fp32 and CUDA AMP."""
    runs = {"cpu_fp32": _step_rate(chips, spec.model_copy(update={"device": "cpu"}), work / "c")}
    if gpu.torch_device().type == "cuda":
        cuda = spec.model_copy(update={"device": "cuda"})
        runs["cuda_fp32"] = _step_rate(chips, cuda.model_copy(update={"amp": False}), work / "g")
        with gpu.UtilisationSampler() as sampler:
            runs["cuda_amp"] = _step_rate(chips, cuda, work / "a")
        runs["cuda_amp"]["gpu_utilisation"] = sampler.summary(skip_s=1.0)
    return runs


def bench_reads(chips: Path, repeats: int) -> dict[str, Any]:
    """Whole train split into the training device, per route, in MB/s."""
    mb = _train_bytes(chips) / 1e6
    routes: dict[str, dict[str, Any]] = {}

    def timed(prefer_gpu: bool, to_device: bool) -> dict[str, Any]:
        got: list[str] = []

        def read() -> None:
            chipset = gpu.read_chips_to_gpu(chips, "train", prefer_gpu=prefer_gpu)
            if to_device and not chipset.x.is_cuda:
                chipset.x.cuda(), chipset.y.cuda()
                torch.cuda.synchronize()
            got.append(chipset.route)

        seconds = median_seconds(read, repeats)
        return {"route": got[-1], "seconds": seconds, "mb_per_s": mb / seconds}

    routes["cpu"] = timed(prefer_gpu=False, to_device=False)
    if gpu.cuda_available() and torch.cuda.is_available():
        routes["host_then_device"] = timed(prefer_gpu=False, to_device=True)
        best = timed(prefer_gpu=True, to_device=True)
        routes[best["route"]] = best
    return {"train_split_mb": mb, "routes": routes}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; the dict written by ``--json``."""
    base = TRAIN_PRESETS["full"]
    spec = base.model_copy(
        update={
            "max_epochs": args.epochs,
            "max_seconds": 1e6,  # the epoch count bounds the run, not the clock
            "patience": args.epochs + 1,
            "base_channels": args.base_channels or base.base_channels,
            "batch_size": args.batch,
        }
    )
    work = Path(tempfile.mkdtemp(prefix="eoforge-bench-train-"))
    try:
        t0 = time.perf_counter()
        chips = build_chip_store(args.catalog, work)
        prepare_s = time.perf_counter() - t0
        steps = bench_steps(chips, spec, work)
        reads = bench_reads(chips, args.repeats)
        full: dict[str, Any] | None = None
        if args.preset == "full" and gpu.torch_device().type == "cuda":
            t0 = time.perf_counter()
            result = train_model(chips, TRAIN_PRESETS["full"], work / "full", progress=False)
            full = {
                "seconds": time.perf_counter() - t0,
                "train_seconds": result.seconds,
                "epochs_run": result.epochs_run,
                "best_val_miou": result.best_val_miou,
                "device": result.device,
                "amp_dtype": result.amp_dtype,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios: dict[str, float] = {}
    if "cuda_amp" in steps:
        cpu_rate = steps["cpu_fp32"]["steps_per_s"]
        ratios["cuda_amp_vs_cpu_steps"] = steps["cuda_amp"]["steps_per_s"] / cpu_rate
        ratios["cuda_amp_vs_cuda_fp32_steps"] = (
            steps["cuda_amp"]["steps_per_s"] / steps["cuda_fp32"]["steps_per_s"]
        )
    gpu_routes = [r for r in reads["routes"] if r in ("kvikio", "cupy")]
    if gpu_routes:
        ratios["gpu_read_vs_host_then_device"] = (
            reads["routes"][gpu_routes[0]]["mb_per_s"]
            / reads["routes"]["host_then_device"]["mb_per_s"]
        )
    missing = []
    if "cuda_amp" not in steps:
        missing += [
            "steps.cuda_fp32 / steps.cuda_amp (training step rate on CUDA, fp32 and AMP)",
            "steps.cuda_amp.gpu_utilisation (NVML busy % while training)",
        ]
    if not gpu_routes:
        missing.append(
            "reads.routes.kvikio (chips from Zarr into GPU memory via kvikio + cupy) vs "
            "host_then_device"
        )
    if args.preset == "full" and full is None:
        missing.append("full_preset_on_gpu (wall time of the full configuration on a GPU)")
    return {
        "ratios": ratios,
        "steps": steps,
        "reads": reads,
        "full_preset_on_gpu": full,
        "missing": missing,
        "spec": spec.model_dump(mode="json"),
        "prepare_seconds": prepare_s,
        "catalog": str(args.catalog),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()[0],
            "torch": torch.__version__,
            "cuda_devices": gpu.cuda_device_count(),
            "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "chip_route": gpu.chip_read_route(),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']['device_name']}, {result['machine']['cpus']} CPUs")
    for name, r in result["steps"].items():
        util = r.get("gpu_utilisation", {}).get("median_pct")
        extra = f", GPU busy median {util:.0f} %" if util is not None else ""
        print(
            f"  steps {name:10s} {r['steps_per_s']:8.2f} steps/s  {r['chips_per_s']:8.1f} chips/s"
            f"  ({r['steps']} steps, {r['epochs']} epochs){extra}"
        )
    for name, r in result["reads"]["routes"].items():
        print(f"  read  {name:16s} {r['mb_per_s']:9.1f} MB/s  ({r['seconds'] * 1e3:.1f} ms)")
    for name, value in result["ratios"].items():
        print(f"  ratio {name} = {value:.2f}")
    if result["full_preset_on_gpu"]:
        print(f"  full preset on GPU: {result['full_preset_on_gpu']}")
    for item in result["missing"]:
        print(f"  missing: {item}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--catalog", type=Path, default=BUNDLED_CATALOG)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", choices=["none", "full"], default="none")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
