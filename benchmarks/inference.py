"""Inference benchmark: the product's model at the product's windows against the machine's
limit, OpenVINO vs ONNX Runtime vs torch eager, int8 vs fp32, and whole-scene throughput.

    python -m benchmarks.inference --json OUT [--threads N] [--repeats 9] [--model-dir DIR]

Measured side by side in one process run, on this machine:

- the model the product trains (``eoforge.training.models.build_model`` with the default bands,
  classes and width and the in-graph NDVI / NDWI inputs, seeded random weights and BatchNorm
  statistics; or a trained ``--model-dir``), exported with ``eoforge.export.onnx.export_onnx``
  (the inference form of ``eoforge.export.graph``, parity-checked), at the product's default
  windows (``InferSpec()``: 512 px, 48 px overlap, batch 2);
- ``limits``: the model's FLOPs per output pixel (torch's flop counter) and the best measured
  GFLOP/s of its own 3x3 conv shapes (ORT NCHWc, OpenVINO and torch channels-last), hence the
  ``limits.mpx_per_s`` the machine allows; ``ratios.whole_scene_vs_limit`` is the whole-scene
  rate over it (medians; ``_best`` from the fastest run), the scene run by what the product
  opens on this machine (``eoforge.export.torch_session.open_predictor``: OpenVINO on a CPU,
  ``config.runtime``), beside ONNX Runtime on the same path
  (``ratios.product_runtime_vs_onnxruntime``);
- whole-scene inference of the real 512 x 512 scene with the inference form vs the graph
  exported as trained (``ratios.inference_form_vs_trained_graph``, interleaved, and the
  class-map agreement of the two);
- ``int8``: static QDQ quantization (``eoforge.export.quantize``) calibrated on chips of the
  training tile vs fp32, in the product's runtime (``ratios.int8_vs_fp32``) and in ONNX Runtime
  (``ratios.int8_vs_fp32_onnxruntime``), interleaved, class-map agreement on every
  date of the test tile, and with a trained ``--model-dir`` the mIoU drop against the Sen2Cor
  labels (``accuracy.int8_miou_drop``);
- torch eager (``torch.inference_mode``) vs ONNX Runtime with eoforge's tuned session (IO
  binding, the path ``eoforge.inference.predict`` uses), plus ORT with default options,
  ``session.run`` instead of IO binding and busy-waiting threads, same thread count;
- a larger scene tiled from the sample (``--large-size`` square, never held in memory whole),
  streamed window-strip by window-strip into a COG (``eoforge.inference.predict.predict_to_cog``), with the
  peak of Python-visible memory (tracemalloc) against what the scene would need in one piece;
- on a machine with a CUDA GPU and onnxruntime-gpu: the same on the GPU (ORT CUDA vs torch CUDA
  eager and with bf16 autocast, and whole-scene Mpx/s); reported as missing otherwise.

No trained model or run directory is needed (pass ``--model-dir`` to use a trained one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import rasterio
import torch

from benchmarks._limits import conv_contenders, limit_from_times, model_shapes
from benchmarks._scenes import NullWriter, TiledScene
from benchmarks._timing import interleaved_seconds, median_seconds
from eoforge.compute import gpu
from eoforge.config import BUNDLED_CATALOG, ChipSpec, InferSpec, LabelSpec, StacSpec, TrainSpec
from eoforge.export.onnx import _export, export_onnx
from eoforge.export.quantize import quantize_int8
from eoforge.export.torch_session import open_predictor, runtime_of
from eoforge.inference.predict import predict_raster, predict_scene, predict_to_cog
from eoforge.inference.session import _POOL, INPUT_NAME, OUTPUT_NAME, open_session
from eoforge.labels.classes import scl_to_classes
from eoforge.training.files import (
    MODEL_CONFIG_NAME,
    MODEL_FORMAT,
    MODEL_WEIGHTS_NAME,
    load_model,
    read_model_config,
)
from eoforge.training.metrics import confusion_matrix, metrics_from_confusion
from eoforge.training.models import ARCHITECTURE, DEPTH, build_model, index_pairs_for

#: The real test scene: tile 33TWM (held out from training), 2023-08-15.
SCENE_ITEM = "S2A_33TWM_20230815_0_L2A"
BAND_FILES = ("B02", "B03", "B04", "B08")  # blue, green, red, nir
#: The product's defaults: bands (``StacSpec``), classes (``LabelSpec``), training width.
BANDS = StacSpec().bands
CLASSES = len(LabelSpec().classes)
BASE_CHANNELS = TrainSpec().base_channels
TRANSFORM = (120.0, 0.0, 524100.0, 0.0, -120.0, 5075880.0)


def read_scene(size: int | None = None) -> np.ndarray:
    """The real scene (4, 512, 512) uint16 DN from the bundled sample (top-left crop if size)."""
    folder = BUNDLED_CATALOG / SCENE_ITEM
    bands = []
    for name in BAND_FILES:
        with rasterio.open(folder / f"{name}.tif") as src:
            bands.append(src.read(1))
    scene = np.stack(bands)
    return scene[:, :size, :size] if size else scene


def build_random_model(
    folder: Path,
    scene: np.ndarray,
    base_channels: int,
    sample: np.ndarray,
    spectral_indices: bool = True,
) -> tuple[torch.nn.Module, Path, float]:
    """A UNet as the product trains it (seeded random weights, the default bands, classes and
    in-graph spectral indices) saved as a model dir and exported to ONNX.

    Returns:
        (torch model in eval mode, ONNX path, parity max |diff| from export_onnx).
    """
    from safetensors.torch import save_file

    valid = (scene != 0).all(axis=0)
    pixels = scene[:, valid].astype(np.float64)
    mean = pixels.mean(axis=1).tolist()
    std = np.maximum(pixels.std(axis=1), 1.0).tolist()
    pairs = index_pairs_for(BANDS) if spectral_indices else []
    torch.manual_seed(0)
    model = build_model(scene.shape[0], CLASSES, base_channels, mean, std, pairs).eval()
    _randomise_batchnorm(model)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / MODEL_WEIGHTS_NAME))
    config = {
        "format": MODEL_FORMAT,
        "architecture": {
            "name": ARCHITECTURE,
            "depth": DEPTH,
            "in_channels": scene.shape[0],
            "num_classes": CLASSES,
            "base_channels": base_channels,
            "index_pairs": [list(p) for p in pairs],
        },
        "band_mean": mean,
        "band_std": std,
        "bands": list(BANDS),
        "classes": list(LabelSpec().classes),
        "weights": MODEL_WEIGHTS_NAME,
    }
    (folder / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    result = export_onnx(folder, folder / "model.onnx", sample[:2])
    return load_model(folder), result.onnx_path, result.max_abs_diff


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, as after training (so folding them is exercised)."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _trained_graph(model: torch.nn.Module, example: np.ndarray, path: Path) -> Path:
    """The network exported as trained (decoder concatenations kept), for comparison."""
    _export(model, torch.from_numpy(example[:1]), path, 17)
    return path


def _product_model(args: argparse.Namespace) -> bool:
    """Whether the benchmarked network is the product's default one (width, index inputs)."""
    if args.model_dir is None:
        return bool(args.base_channels == BASE_CHANNELS and not args.no_indices)
    arch = read_model_config(Path(args.model_dir))["architecture"]
    return bool(arch["base_channels"] == BASE_CHANNELS and arch.get("index_pairs"))


def _item_bands(item: str) -> tuple[np.ndarray, np.ndarray]:
    """(bands (4, H, W) uint16, Sen2Cor classes grouped like the labels (H, W)) of an item."""
    return folder_bands(BUNDLED_CATALOG / item)


def folder_bands(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(bands (4, H, W) uint16, Sen2Cor classes grouped like the labels (H, W)) of an item
    folder holding ``B02/B03/B04/B08/SCL.tif``."""
    bands = []
    for name in BAND_FILES:
        with rasterio.open(folder / f"{name}.tif") as src:
            bands.append(src.read(1))
    with rasterio.open(folder / "SCL.tif") as src:
        labels = scl_to_classes(src.read(1), LabelSpec())
    return np.stack(bands), labels


def _tile_items(tiles: tuple[str, ...]) -> list[str]:
    return sorted(
        p.name for p in BUNDLED_CATALOG.iterdir() if p.is_dir() and any(t in p.name for t in tiles)
    )


def _calibration_chips(size: int = 128) -> np.ndarray:
    """Chips of the training tile's dates (``ChipSpec().train_tiles``): int8 calibration data."""
    chips = []
    for item in _tile_items(ChipSpec().train_tiles):
        bands, _ = _item_bands(item)
        for r in range(0, bands.shape[1] - size + 1, 2 * size):
            for c in range(0, bands.shape[2] - size + 1, 2 * size):
                chips.append(bands[:, r : r + size, c : c + size])
    return np.stack(chips)


def _int8_section(
    onnx_path: Path, tmp: Path, batch: np.ndarray, spec: InferSpec, threads: int, args: Any
) -> dict[str, Any]:
    """int8 (static QDQ, calibrated on training-tile chips) vs fp32 in the product's runtime
    (what ``infer.precision`` picks on this machine) and in ONNX Runtime, side by side; class
    maps on every date of the test tile against each other and (trained model only) against
    the Sen2Cor labels."""
    calibration = _calibration_chips()
    quant = quantize_int8(onnx_path, tmp / "model-int8.onnx", calibration)
    base = spec.model_copy(update={"threads": threads})
    sessions = {
        "fp32": open_predictor(onnx_path, base),
        "int8": open_predictor(
            tmp / "model-int8.onnx", base.model_copy(update={"precision": "int8"})
        ),
        "fp32_onnxruntime": open_session(onnx_path, threads, prefer_gpu=False),
        "int8_onnxruntime": open_session(tmp / "model-int8.onnx", threads, prefer_gpu=False),
    }
    scene = read_scene()
    times = interleaved_seconds(
        {
            "windows_fp32": _ort_iobinding(sessions["fp32"], batch),
            "windows_int8": _ort_iobinding(sessions["int8"], batch),
            **{
                f"scene_{name}": lambda s=session: predict_scene(s, scene, spec)
                for name, session in sessions.items()
            },
        },
        args.repeats,
    )
    k = CLASSES
    cms = {name: np.zeros((k, k), np.int64) for name in sessions}
    agree, total = 0, 0
    for item in _tile_items(ChipSpec().test_tiles):
        bands, labels = _item_bands(item)
        maps = {name: predict_scene(s, bands, spec) for name, s in sessions.items()}
        valid = maps["fp32"] != 255
        agree += int((maps["fp32"] == maps["int8"])[valid].sum())
        total += int(valid.sum())
        for name, m in maps.items():
            cms[name] += confusion_matrix(labels, m, k)
    names = list(LabelSpec().classes)
    miou = {name: metrics_from_confusion(cm, names)["miou"] for name, cm in cms.items()}
    trained = args.model_dir is not None

    def ratio(a: str, b: str, key: str = "median") -> float:
        return float(times[a][key] / times[b][key])

    return {
        "quantization": {**quant, "path": "model-int8.onnx"},
        "runtime": {"fp32": runtime_of(sessions["fp32"]), "int8": runtime_of(sessions["int8"])},
        "seconds": times,
        "ratios": {
            "windows": ratio("windows_fp32", "windows_int8"),
            "whole_scene": ratio("scene_fp32", "scene_int8"),
            "whole_scene_cpu_time": ratio("scene_fp32", "scene_int8", "cpu_median"),
            "whole_scene_onnxruntime": ratio("scene_fp32_onnxruntime", "scene_int8_onnxruntime"),
            "int8_product_runtime_vs_onnxruntime": ratio("scene_int8_onnxruntime", "scene_int8"),
        },
        "accuracy": {
            "test_tile_items": _tile_items(ChipSpec().test_tiles),
            "class_map_agreement_int8_vs_fp32": agree / max(total, 1),
            "miou_fp32": miou["fp32"],
            "miou_int8": miou["int8"],
            "miou_fp32_onnxruntime": miou["fp32_onnxruntime"],
            "miou_int8_onnxruntime": miou["int8_onnxruntime"],
            "int8_miou_drop": (miou["fp32"] - miou["int8"]) if trained else None,
            "int8_miou_drop_onnxruntime": (miou["fp32_onnxruntime"] - miou["int8_onnxruntime"])
            if trained
            else None,
            "note": None
            if trained
            else "random weights: mIoU against the labels means nothing; pass --model-dir "
            "with a trained model for int8_miou_drop",
        },
    }


def _windows(scene: np.ndarray, window: int, count: int) -> np.ndarray:
    """``count`` windows on a regular grid over the scene, float32 (count, C, window, window)."""
    _, h, w = scene.shape
    per_row = max(1, (w - window) // window + 1)
    out = []
    for k in range(count):
        r, c = divmod(k, per_row)
        y = min(r * window, h - window)
        x = min(c * window, w - window)
        out.append(scene[:, y : y + window, x : x + window])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _ort_iobinding(session: Any, batch: np.ndarray) -> Callable[[], Any]:
    """The IO-binding path of eoforge.inference.predict: preallocated input and output buffers."""
    out_shape = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:1]})[0].shape[1:]
    out = np.empty((len(batch), *out_shape), np.float32)
    binding = session.io_binding()

    def run() -> None:
        binding.bind_cpu_input(INPUT_NAME, batch)
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        session.run_with_iobinding(binding)

    return run


def _machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_used": threads,
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_devices": gpu.cuda_device_count(),
        "ort_providers": ort.get_available_providers(),
    }


def _gpu_section(
    model: torch.nn.Module,
    onnx_path: Path,
    batch: np.ndarray,
    scene: np.ndarray,
    large: TiledScene,
    spec: InferSpec,
    repeats: int,
) -> dict[str, Any]:
    """GPU numbers where there is a GPU; what is missing otherwise."""
    missing = [
        "ratios.ort_cuda_vs_torch_cuda (ORT CUDA EP vs torch CUDA eager, same model and windows)",
        "ratios.ort_cuda_vs_torch_cuda_bf16 (vs torch CUDA eager under bf16 autocast)",
        "timings_s.ort_cuda / torch_cuda / torch_cuda_bf16 (median batch time on the GPU)",
        "mpx_per_s.real_scene_cuda and large_tiled_cuda (whole-scene inference on the GPU)",
        "gpu_utilisation (NVML busy % during >= 10 s of back-to-back whole-scene inference, "
        "model runs overlapped with blending) and gpu_utilisation_serial (not overlapped)",
    ]
    section: dict[str, Any] = {
        "cuda_devices": gpu.cuda_device_count(),
        "ort_cuda_provider": gpu.CUDA_PROVIDER in ort.get_available_providers(),
        "torch_cuda": torch.cuda.is_available(),
    }
    if not (gpu.ort_cuda_available() and torch.cuda.is_available()):
        section["measured"] = False
        section["missing"] = missing
        return section
    device = torch.device("cuda")
    model_gpu = model.to(device)
    x = torch.from_numpy(batch).to(device)

    def torch_cuda(autocast: bool) -> Callable[[], Any]:
        def run() -> None:
            amp = gpu.amp_autocast(device) if autocast else contextlib.nullcontext()
            with torch.inference_mode(), amp:
                model_gpu(x)
            torch.cuda.synchronize()

        return run

    session = open_session(onnx_path, prefer_gpu=True)
    t_torch = median_seconds(torch_cuda(False), repeats, warmup=3)
    t_bf16 = median_seconds(torch_cuda(True), repeats, warmup=3)
    t_ort = median_seconds(_ort_iobinding(session, batch), repeats, warmup=3)
    t_scene = median_seconds(lambda: predict_scene(session, scene, spec), repeats, warmup=2)
    t0 = time.perf_counter()
    predict_raster(session, large, spec, NullWriter())
    t_large = time.perf_counter() - t0
    large_mpx = large.shape[1] * large.shape[2] / 1e6

    def steady_state(pipelined: bool) -> dict[str, Any]:
        """Whole-scene inference back to back for >= 10 s, NVML sampling the GPU."""
        run_spec = spec.model_copy(update={"pipelined": pipelined})
        with gpu.UtilisationSampler() as sampler:
            deadline, scenes, t0 = time.perf_counter() + 10.0, 0, time.perf_counter()
            while time.perf_counter() < deadline:
                predict_raster(session, large, run_spec, NullWriter())
                scenes += 1
        seconds = time.perf_counter() - t0
        return {
            **sampler.summary(skip_s=1.0),
            "scenes": scenes,
            "mpx_per_s": scenes * large_mpx / seconds,
        }

    utilisation = steady_state(pipelined=True)  # the default on a GPU session
    utilisation_serial = steady_state(pipelined=False)
    section.update(
        {
            "measured": True,
            "device_name": torch.cuda.get_device_name(0),
            "session_providers": session.get_providers(),
            "timings_s": {"torch_cuda": t_torch, "torch_cuda_bf16": t_bf16, "ort_cuda": t_ort},
            "ratios": {
                "ort_cuda_vs_torch_cuda": t_torch / t_ort,
                "ort_cuda_vs_torch_cuda_bf16": t_bf16 / t_ort,
            },
            "mpx_per_s": {
                "real_scene_cuda": scene.shape[1] * scene.shape[2] / 1e6 / t_scene,
                "large_tiled_cuda": large_mpx / t_large,
            },
            "gpu_utilisation": utilisation,
            "gpu_utilisation_serial": utilisation_serial,
        }
    )
    return section


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; return the result dict written by ``--json``."""
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    scene = read_scene(args.scene_size)
    batch = _windows(scene, args.window, args.batch)
    spec = InferSpec(window=args.window, overlap=args.overlap, batch_size=args.batch)
    machine = _machine(threads)

    with tempfile.TemporaryDirectory(prefix="eoforge-bench-") as tmp:
        if args.model_dir:
            model, onnx_path, parity = (
                load_model(args.model_dir),
                Path(args.model_dir) / "model.onnx",
                None,
            )
        else:
            model, onnx_path, parity = build_random_model(
                Path(tmp) / "model", scene, args.base_channels, batch, not args.no_indices
            )
        model.eval()
        x = torch.from_numpy(batch)
        widths = [int(m[0].out_channels) for m in model.encoders]  # type: ignore[index,union-attr]
        widths.append(int(model.bottleneck[0].out_channels))  # type: ignore[index,union-attr]
        conv_fns, conv_flops = conv_contenders(
            model_shapes(widths, args.window), args.batch, threads
        )
        trained_path = _trained_graph(model, batch, Path(tmp) / "trained.onnx")

        def torch_eager() -> None:
            with torch.inference_mode():
                model(x)

        tuned = open_session(onnx_path, threads=threads, prefer_gpu=False)
        # what `eoforge` itself opens for this spec on this machine (OpenVINO on a CPU)
        product = open_predictor(onnx_path, spec.model_copy(update={"threads": threads}))
        product_trained = open_predictor(trained_path, spec.model_copy(update={"threads": threads}))
        # the same model, its batch buffers mapped afresh each call (as before session 16)
        product_fresh = open_predictor(onnx_path, spec.model_copy(update={"threads": threads}))

        def fresh_buffers() -> None:
            _POOL.forget(product_fresh)
            predict_scene(product_fresh, scene, spec)

        spinning = open_session(onnx_path, threads=threads, prefer_gpu=False, spinning=True)
        plain_opts = ort.SessionOptions()
        plain_opts.intra_op_num_threads = threads
        plain = ort.InferenceSession(
            str(onnx_path), sess_options=plain_opts, providers=["CPUExecutionProvider"]
        )
        feed = {INPUT_NAME: batch}
        with torch.inference_mode():
            reference = model(x).numpy()
        max_diff = float(np.abs(tuned.run([OUTPUT_NAME], feed)[0] - reference).max())

        timings = {
            "torch_eager": median_seconds(torch_eager, args.repeats),
            "ort_tuned_iobinding": median_seconds(_ort_iobinding(tuned, batch), args.repeats),
            "ort_tuned_run": median_seconds(lambda: tuned.run([OUTPUT_NAME], feed), args.repeats),
            "ort_tuned_spinning": median_seconds(_ort_iobinding(spinning, batch), args.repeats),
            "ort_default_options": median_seconds(
                lambda: plain.run([OUTPUT_NAME], feed), args.repeats
            ),
        }
        one_scene_window = np.ascontiguousarray(
            scene[None, :, : min(scene.shape[1], spec.window), : min(scene.shape[2], spec.window)],
            dtype=np.float32,
        )
        # the model and the conv shapes that set its limit, round-robin under the same load
        side_by_side = interleaved_seconds(
            {
                "inference_form": lambda: predict_scene(product, scene, spec),
                "trained_graph": lambda: predict_scene(product_trained, scene, spec),
                "onnxruntime": lambda: predict_scene(tuned, scene, spec),
                # the model alone on the scene's one window: what blending and I/O add
                "model_only": _ort_iobinding(product, one_scene_window),
                "fresh_buffers": fresh_buffers,
                **conv_fns,
            },
            args.repeats,
        )
        limits = limit_from_times(model, scene.shape[0], args.window, conv_flops, side_by_side)
        side_by_side = {k: v for k, v in side_by_side.items() if k not in conv_fns}
        scene_s = side_by_side["inference_form"]["median"]
        # median minor page faults per scene call, the two round-robin (no warm-up)
        fault_runs = interleaved_seconds(
            {"pooled": lambda: predict_scene(product, scene, spec), "fresh": fresh_buffers},
            args.repeats,
            warmup=0,
        )
        faults = {
            k: v["minor_faults_median"] for k, v in fault_runs.items() if "minor_faults_median" in v
        }
        with torch.inference_mode():
            torch_classes = model(torch.from_numpy(batch)).argmax(1).numpy()
        ort_classes = tuned.run([OUTPUT_NAME], feed)[0].argmax(1)
        class_agreement = float((torch_classes == ort_classes).mean())
        product_map = predict_scene(product, scene, spec)
        scene_agreement = float((product_map == predict_scene(product_trained, scene, spec)).mean())
        runtime_agreement = float((product_map == predict_scene(tuned, scene, spec)).mean())
        # the model in a worker thread, overlapped with blending (the GPU default), on the CPU:
        # timed round-robin against the serial path on a scene of many windows (timed one
        # after the other on the one-window scene, as before session 8, the order alone gave
        # 1.08-1.15x)
        large = TiledScene(scene, args.large_size, args.large_size)
        piping = interleaved_seconds(
            {
                str(p): lambda p=p: predict_raster(
                    product, large, spec.model_copy(update={"pipelined": p}), NullWriter()
                )
                for p in (False, True)
            },
            args.repeats,
        )
        # the same scene in one window (a fully convolutional net takes any multiple of 8):
        # no overlap recomputed, which is what the default 256/64 windows pay on small scenes
        one_window = InferSpec(
            window=max(args.window, min(scene.shape[1:]) // 8 * 8),
            overlap=args.window // 4,
            batch_size=1,
        )
        one_window_s = median_seconds(
            lambda: predict_scene(product, scene, one_window), args.repeats
        )
        scene_mpx = scene.shape[1] * scene.shape[2] / 1e6

        large_mpx = args.large_size**2 / 1e6
        tracemalloc.start()
        t0 = time.perf_counter()
        _, stats = predict_to_cog(
            product, large, spec, Path(tmp) / "large.tif", "EPSG:32633", TRANSFORM
        )
        large_s = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        whole_bytes = args.large_size**2 * (scene.shape[0] + CLASSES) * 4
        int8 = _int8_section(onnx_path, Path(tmp), batch, spec, threads, args)
        gpu_section = _gpu_section(model, onnx_path, batch, scene, large, spec, args.repeats)

    with contextlib.suppress(OSError):
        machine["load_average_at_end"] = list(os.getloadavg())
    px = batch.shape[0] * batch.shape[2] * batch.shape[3] / 1e6
    scene_mpx_per_s = scene_mpx / scene_s
    result = {
        "benchmark": "inference",
        "limits": limits,
        "int8": int8,
        "accuracy": {"int8_miou_drop": int8["accuracy"]["int8_miou_drop"]},
        "whole_scene_s": side_by_side,
        "ratios": {
            "whole_scene_vs_limit": scene_mpx_per_s / limits["mpx_per_s"],
            # the limit level by level (benchmarks/_limits.py): shallow levels bound by memory
            "whole_scene_vs_limit_by_level": scene_mpx_per_s / limits["mpx_per_s_by_level"],
            "model_only_vs_limit_by_level": scene_mpx
            / side_by_side["model_only"]["median"]
            / limits["mpx_per_s_by_level"],
            "whole_scene_vs_limit_best": scene_mpx
            / side_by_side["inference_form"]["min"]
            / limits["mpx_per_s_best"],
            # per CPU second (process CPU time): robust when other work shares the cores
            "whole_scene_vs_limit_cpu_time": scene_mpx
            / side_by_side["inference_form"]["cpu_median"]
            / limits["mpx_per_cpu_s"],
            "inference_form_vs_trained_graph": side_by_side["trained_graph"]["median"] / scene_s,
            "inference_form_vs_trained_graph_cpu_time": side_by_side["trained_graph"]["cpu_median"]
            / side_by_side["inference_form"]["cpu_median"],
            "model_only_vs_whole_scene": scene_s / side_by_side["model_only"]["median"],
            "pooled_vs_fresh_buffers": side_by_side["fresh_buffers"]["median"] / scene_s,
            # the product's CPU runtime (OpenVINO) against ONNX Runtime, same whole-scene path
            "product_runtime_vs_onnxruntime": side_by_side["onnxruntime"]["median"] / scene_s,
            "product_runtime_vs_onnxruntime_cpu_time": side_by_side["onnxruntime"]["cpu_median"]
            / side_by_side["inference_form"]["cpu_median"],
            "int8_vs_fp32_cpu_time": int8["ratios"]["whole_scene_cpu_time"],
            "int8_vs_fp32": int8["ratios"]["whole_scene"],
            "int8_vs_fp32_windows": int8["ratios"]["windows"],
            "int8_vs_fp32_onnxruntime": int8["ratios"]["whole_scene_onnxruntime"],
            "ort_vs_torch": timings["torch_eager"] / timings["ort_tuned_iobinding"],
            "ort_tuned_vs_default_options": timings["ort_default_options"]
            / timings["ort_tuned_iobinding"],
            "iobinding_vs_run": timings["ort_tuned_run"] / timings["ort_tuned_iobinding"],
            "no_spinning_vs_spinning": timings["ort_tuned_spinning"]
            / timings["ort_tuned_iobinding"],
            "pipelined_vs_serial_cpu": piping["False"]["median"] / piping["True"]["median"],
            "pipelined_vs_serial_cpu_time": piping["False"]["cpu_median"]
            / piping["True"]["cpu_median"],
        },
        "timings_s": timings,
        "mpx_per_s": {
            "windows_torch_eager": px / timings["torch_eager"],
            "windows_ort": px / timings["ort_tuned_iobinding"],
            "real_scene": scene_mpx / scene_s,
            "real_scene_onnxruntime": scene_mpx / side_by_side["onnxruntime"]["median"],
            "large_tiled_serial": large_mpx / piping["False"]["median"],
            "large_tiled_pipelined": large_mpx / piping["True"]["median"],
            "real_scene_one_window": scene_mpx / one_window_s,
            "large_tiled": large_mpx / large_s,
        },
        "mpx_per_s_per_core": {
            "windows_ort": px / timings["ort_tuned_iobinding"] / threads,
            "real_scene": scene_mpx / scene_s / threads,
            "real_scene_one_window": scene_mpx / one_window_s / threads,
            "large_tiled": large_mpx / large_s / threads,
        },
        "memory": {
            "large_scene_px": [args.large_size, args.large_size],
            "naive_whole_scene_float32_input_plus_probabilities_mb": whole_bytes / 1e6,
            "streamed_peak_traced_mb": peak / 1e6,
            "max_buffered_rows": stats.max_buffered_rows,
            "minor_page_faults_per_scene": faults,
        },
        "parity": {
            "export_max_abs_diff": parity,
            "ort_vs_torch_max_abs_diff": max_diff,
            "ort_vs_torch_class_agreement": class_agreement,
            "scene_class_map_agreement_vs_trained_graph": scene_agreement,
            "scene_class_map_agreement_product_runtime_vs_onnxruntime": runtime_agreement,
        },
        "config": {
            "model": str(args.model_dir)
            if args.model_dir
            else f"unet base {args.base_channels}, random weights, bands {list(BANDS)}, "
            f"{CLASSES} classes, spectral indices {'off' if args.no_indices else 'on'}",
            "product_defaults": {
                "infer_spec": InferSpec().model_dump(),
                "base_channels": BASE_CHANNELS,
                "spectral_indices": TrainSpec().spectral_indices,
                "bands": list(BANDS),
                "classes": CLASSES,
            },
            "uses_product_defaults": bool(
                spec.window == InferSpec().window
                and spec.overlap == InferSpec().overlap
                and spec.batch_size == InferSpec().batch_size
                and _product_model(args)
            ),
            "windows": list(batch.shape),
            "scene": [SCENE_ITEM, *scene.shape],
            "infer_spec": spec.model_dump(),
            "one_window_spec": one_window.model_dump(),
            "repeats": args.repeats,
            "threads": threads,
            "runtime": runtime_of(product),
        },
        "machine": machine,
        "gpu": gpu_section,
    }
    return result


def _print(result: dict[str, Any]) -> None:
    t = result["timings_s"]
    rows = [
        ("torch eager (inference_mode)", t["torch_eager"]),
        ("ORT tuned, IO binding (eoforge)", t["ort_tuned_iobinding"]),
        ("ORT tuned, session.run", t["ort_tuned_run"]),
        ("ORT tuned, spinning threads", t["ort_tuned_spinning"]),
        ("ORT default options", t["ort_default_options"]),
    ]
    cfg = result["config"]
    print(
        f"windows {cfg['windows']}, {cfg['threads']} thread(s), median of {cfg['repeats']}; "
        f"whole scenes run by {cfg['runtime']}"
    )
    lim = result["limits"]
    print(
        f"  limit: {lim['flop_per_output_px'] / 1e3:.1f} kFLOP/px at "
        f"{lim['achievable_conv_gflop_per_s']:.0f} GFLOP/s -> {lim['mpx_per_s']:.2f} Mpx/s; "
        f"whole scene {result['mpx_per_s']['real_scene']:.2f} Mpx/s"
    )
    for name, seconds in rows:
        print(f"  {name:34s} {seconds * 1000:9.1f} ms")
    for name, value in result["ratios"].items():
        print(f"  ratio {name:28s} {value:9.2f}x")
    for name, value in result["mpx_per_s_per_core"].items():
        print(f"  Mpx/s per core {name:19s} {value:9.3f}")
    mem = result["memory"]
    print(
        f"  large {mem['large_scene_px']}: peak {mem['streamed_peak_traced_mb']:.1f} MB traced vs "
        f"{mem['naive_whole_scene_float32_input_plus_probabilities_mb']:.0f} MB in one piece"
    )
    g = result["gpu"]
    if g.get("measured"):
        print(f"  GPU {g['device_name']}: {g['ratios']}, {g['mpx_per_s']}")
        print(f"  GPU busy, model runs overlapped with blending: {g['gpu_utilisation']}")
        print(f"  GPU busy, not overlapped: {g['gpu_utilisation_serial']}")
    else:
        print("  GPU: not measured (no CUDA device / onnxruntime-gpu); missing:")
        for item in g["missing"]:
            print(f"    - {item}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m benchmarks.inference``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: usable CPUs)")
    parser.add_argument("--repeats", type=int, default=5)
    defaults = InferSpec()
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--overlap", type=int, default=defaults.overlap)
    parser.add_argument("--batch", type=int, default=defaults.batch_size, help="windows per batch")
    parser.add_argument("--base-channels", type=int, default=BASE_CHANNELS)
    parser.add_argument(
        "--no-indices", action="store_true", help="a model without the spectral-index inputs"
    )
    parser.add_argument("--scene-size", type=int, default=None, help="crop the real scene")
    parser.add_argument("--large-size", type=int, default=3072, help="tiled scene edge (px)")
    parser.add_argument("--model-dir", type=Path, default=None, help="a trained model directory")
    args = parser.parse_args(argv)
    result = run(args)
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
