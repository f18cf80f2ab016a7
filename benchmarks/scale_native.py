"""Native-resolution benchmark: real catalog records at the size they promise, an area of
interest, bounded memory.

    python -m benchmarks.scale_native --json OUT [--work DIR] [--repeats 3]

On a catalog written by :func:`eoforge.testing.native.write_native_catalog` from the full
bundled sample (``../shared/data/s2-l2a-sample``): 10 m bands of 10980 x 10980 px and a 20 m
SCL of 5490 x 5490 px per item, records exactly as Earth Search served them (re-pointed at the
files), tiles 33TWL and 33TWM, two dates each. Measured in one process run, each step in a
fresh subprocess (peak resident memory from ``getrusage`` of that child):

1. AOI ingest: ``eoforge.cube.build.write_cube`` over an AOI of about 23 x 22 km across the
   tiles' shared edge vs a bare ``odc.stac.load(items, bbox=..., resolution=10,
   chunks={"x": 2048, "y": 2048})`` + ``to_zarr`` of the same AOI (``ratios.ingest_vs_odc_stac``,
   medians of ``--repeats``, interleaved); pixels stored vs the AOI's pixels;
2. the whole pipeline (``eoforge run --plain``, two training epochs) on that AOI
   (``seconds.aoi_pipeline``, ``memory_mb.aoi_pipeline_peak``);
3. ``eoforge predict`` with that model over one whole 10980 x 10980 tile and date
   (``mpx_per_s.whole_tile_predict``, ``memory_mb.whole_tile_predict_peak``), next to the
   window rate of the same model in the same runtime (OpenVINO on a CPU since session 10) on
   the product's windows (512 px, batch 2), measured right before and right after the predict
   (``ratios.whole_tile_vs_window_rate``; the 48 px overlap alone puts 24 x 24 windows on the
   tile, of 504 px since session 9: 1.21x its pixels). The run's provenance splits that ratio:
   ``ratios.whole_tile_window_overlap`` (pixels through the model over the tile's),
   ``ratios.whole_tile_model_share`` (the model's runs over the infer stage) and
   ``mpx_per_s.whole_tile_model_in_predict`` (the model's own rate there, against
   ``window_rate``); ``ratios.whole_tile_vs_model_in_predict`` is the ratio against that
   rate instead, free of the machine's speed changing between two measurements;
4. chipping that whole tile's cube (64 px chips, block split, read a chunk row at a time)
   (``seconds.whole_tile_chips``, ``memory_mb.whole_tile_chips_peak``).

The catalog (~1 GB) is written once into ``--work`` and reused; every run uses a fresh store
(nothing is served from a cache) and removes it afterwards. ~10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The full sample is not in the repository (66 MB): ``--sample`` or ``EOFORGE_FULL_SAMPLE``
#: names it; the default is where the shared data sits beside a checkout.
SAMPLE = Path(
    os.environ.get("EOFORGE_FULL_SAMPLE") or ROOT.parent / "shared" / "data" / "s2-l2a-sample"
)
ITEMS = [
    "S2A_33TWL_20230815_0_L2A",
    "S2A_33TWM_20230815_0_L2A",
    "S2B_33TWL_20230813_0_L2A",
    "S2B_33TWM_20230813_0_L2A",
]
#: ~23 x 22 km (lon/lat) across the shared edge of 33TWL (south) and 33TWM (north).
AOI = (15.70, 45.90, 16.00, 46.10)
VARS = ["blue", "green", "red", "nir", "scl"]


def _child(code: str, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: (seconds, its peak RSS in MB, stdout).

    The child prints its own peak (:data:`PEAK_MB`) as the last line of JSON.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = proc.stdout.strip().splitlines()
    own = json.loads(out[-1]) if out and out[-1].startswith("{") else {}
    return seconds, float(own.get("peak_mb", float("nan"))), proc.stdout


#: The child's own peak resident memory: VmHWM of its address space (``ru_maxrss`` would
#: carry the parent's peak across fork + exec on Linux).
PEAK_MB = (
    "[int(line.split()[1]) / 1024 for line in open('/proc/self/status') "
    "if line.startswith('VmHWM')][0]"
)
PEAK = f"import json\nprint(json.dumps({{'peak_mb': {PEAK_MB}}}))\n"


def _catalog(work: Path) -> Path:
    cat = work / "native-catalog"
    if (cat / "collection.json").is_file():
        return cat
    from eoforge.testing.native import write_native_catalog

    t0 = time.perf_counter()
    write_native_catalog(SAMPLE, cat, ITEMS)
    print(f"native catalog written in {time.perf_counter() - t0:.0f} s: {cat}", flush=True)
    return cat


def _items(cat: Path) -> list[dict[str, Any]]:
    return [json.loads((cat / i / f"{i}.json").read_text()) for i in ITEMS]


def _ingest_code(cat: Path, out: Path, bare: bool) -> str:
    load = (
        "import odc.stac, pystac\n"
        "py = [pystac.Item.from_dict(i, preserve_dict=True) for i in items]\n"
        f"ds = odc.stac.load(py, bands={VARS!r}, bbox={AOI!r}, resolution=10, "
        "chunks={'x': 2048, 'y': 2048}, groupby='solar_day')\n"
        f"ds.drop_vars('spatial_ref', errors='ignore').to_zarr({str(out)!r}, zarr_format=3, "
        "consolidated=False, mode='w')\n"
        "pixels = int(ds.sizes['y'] * ds.sizes['x'])\n"
        if bare
        else "from eoforge.config import StacSpec\n"
        "from eoforge.cube.build import write_cube\n"
        "from eoforge.stac.aoi import aoi_geometry\n"
        f"info = write_cube(items, {VARS!r}, Path({str(out)!r}), None, "
        f"aoi_geometry(StacSpec(bbox={AOI!r})), label_variables=('scl',))\n"
        "pixels = sum(s[1] * s[2] for s in info.shape.values())\n"
    )
    return (
        "import json, shutil\nfrom pathlib import Path\n"
        f"shutil.rmtree({str(out)!r}, ignore_errors=True)\n"
        f"items = [json.loads(p.read_text()) for p in sorted(Path({str(cat)!r}).glob('*/*.json'))]\n"
        + load
        + "print(json.dumps({'pixels': pixels}))\n"
        + PEAK
    )


def _aoi_pixels() -> int:
    """10 m pixels of the AOI's area in UTM zone 33."""
    import numpy as np
    import shapely
    from pyproj import Transformer

    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    dense = shapely.segmentize(shapely.box(*AOI), 0.001)
    utm = shapely.transform(dense, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
    return int(utm.area / 100)


def _ingest(cat: Path, work: Path, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {"eoforge": [], "odc_stac": []}
    pixels: dict[str, int] = {}
    for r in range(repeats):
        for name, bare in (("eoforge", False), ("odc_stac", True)):
            seconds, peak, stdout = _child(_ingest_code(cat, work / f"ingest-{name}.zarr", bare))
            pixels[name] = json.loads(stdout.strip().splitlines()[-2])["pixels"]
            runs[name].append((seconds, peak))
            print(f"ingest {name} #{r + 1}: {seconds:.1f} s, peak {peak:.0f} MB", flush=True)
    return {"runs": runs, "pixels": pixels}


def _spec(path: Path, cat: Path, bbox: Any, **extra: Any) -> Path:
    spec: dict[str, Any] = {"stac": {"catalog_dir": str(cat), **extra}}
    if bbox is not None:
        spec["stac"]["bbox"] = list(bbox)
    spec["train"] = {"max_epochs": 2, "max_seconds": 600}
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(args: list[str], store: Path) -> tuple[float, float, str]:
    env = {"EOFORGE_STORE": str(store), "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}
    code = (
        "import json\n"
        "from eoforge.cli import app\n"
        f"try:\n    app({args!r}, standalone_mode=False)\n"
        f"finally:\n    print(json.dumps({{'peak_mb': {PEAK_MB}}}))\n"
    )
    return _child(code, env)


def _window_times(model_dir: Path, repeats: int) -> tuple[float, list[float]]:
    """Output Mpx of one batch of the product's windows and the seconds of ``repeats`` runs of
    the model on it (no blending), in the runtime ``eoforge predict`` opens on this machine
    (OpenVINO on a CPU)."""
    import numpy as np
    import rasterio

    from eoforge.config import InferSpec
    from eoforge.export.torch_session import open_predictor
    from eoforge.inference.session import INPUT_NAME

    spec = InferSpec.model_validate({})
    session = open_predictor(model_dir / "model.onnx", spec)
    with rasterio.open(SAMPLE / ITEMS[1] / "B04.tif") as src:
        base = src.read(1)[: spec.window, : spec.window].astype(np.float32)
    batch = np.stack([np.stack([base] * 4)] * spec.batch_size)
    for _ in range(2):  # warm-up: arena growth, first-run kernel selection
        session.run(None, {INPUT_NAME: batch})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {INPUT_NAME: batch})
        times.append(time.perf_counter() - t0)
    return spec.batch_size * spec.window**2 / 1e6, times


def _whole_tile_chips(store: Path, out: Path) -> tuple[float, float, dict[str, int]]:
    """Chip the whole-tile cube ``eoforge predict`` ingested: (seconds, peak MB, counts)."""
    import zarr

    for cube in sorted((store / "cubes").glob("*.zarr")):
        root = zarr.open_group(str(cube), mode="r")
        for tile in root.group_keys():
            group = root[tile]
            assert isinstance(group, zarr.Group)
            if group["blue"].shape[-1] == 10980:
                code = (
                    "import json\n"
                    "from eoforge.chips.cut import build_chips\n"
                    "from eoforge.config import ChipSpec, LabelSpec, SamplingSpec\n"
                    f"spec = ChipSpec(size=64, stride=512, train_tiles=({tile!r},), "
                    f"test_tiles=({tile!r},))\n"
                    f"info = build_chips({str(cube)!r}, {str(out)!r}, spec, LabelSpec(), "
                    f"{VARS[:4]!r}, sampling=SamplingSpec(split='block', block_size=1024))\n"
                    "print(json.dumps(info.counts))\n" + PEAK
                )
                seconds, peak, stdout = _child(code)
                return seconds, peak, json.loads(stdout.strip().splitlines()[-2])
    raise RuntimeError(f"no whole-tile cube in {store / 'cubes'}")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_start = list(os.getloadavg())
    cat = _catalog(work)
    ingest = _ingest(cat, work, args.repeats)
    eo = [s for s, _ in ingest["runs"]["eoforge"]]
    odc = [s for s, _ in ingest["runs"]["odc_stac"]]
    aoi_px = _aoi_pixels()

    # a fresh store and run folders per benchmark run: nothing is served from a cache
    fresh = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    store = fresh / "store"
    run_dir = fresh / "aoi-run"
    spec = _spec(fresh / "aoi.yaml", cat, AOI)
    pipe_s, pipe_peak, _ = _cli(
        ["run", "--plain", "--config", str(spec), "--out", str(run_dir)], store
    )
    print(f"AOI pipeline: {pipe_s:.0f} s, peak {pipe_peak:.0f} MB", flush=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    tile_spec = _spec(fresh / "tile.yaml", cat, None, datetime="2023-08-15/2023-08-15")
    tile_spec_data = yaml.safe_load(tile_spec.read_text())
    tile_spec_data["stac"]["max_items"] = 1
    tile_spec.write_text(yaml.safe_dump(tile_spec_data))
    pred_dir = fresh / "tile-predict"
    # the window rate right before and right after the predict, 20 batches (~4 s) each: this
    # machine's speed drifts within minutes (session 16: one 20-batch median after the
    # predict read 2.33 Mpx/s while the model ran at 3.28 inside it), so one spell alone
    # can make the ratio
    batch_mpx, before = _window_times(run_dir / "model", 20)
    pred_s, pred_peak, _ = _cli(
        ["predict", "--model", str(run_dir / "model"), "--config", str(tile_spec),
         "--out", str(pred_dir)],
        store,
    )  # fmt: skip
    prov = json.loads((pred_dir / "provenance.json").read_text())
    infer_s = prov["stage_seconds"]["infer"]
    done = prov["inference"]  # the model's share of that stage, and the overlap's
    tifs = sorted((pred_dir / "predictions").glob("*.tif"))
    import rasterio

    with rasterio.open(tifs[0]) as src:
        tile_px = src.width * src.height
    whole_tile_rate = tile_px / 1e6 / infer_s
    # the model's own rate inside that predict, over the pixels it was given
    model_rate = done["window_pixels"] / 1e6 / done["model_seconds"]
    _, after = _window_times(run_dir / "model", 20)
    window_rate = batch_mpx / statistics.median(before + after)
    chips_s, chips_peak, chips_counts = _whole_tile_chips(store, fresh / "tile-chips.zarr")
    print(f"whole tile chips: {chips_s:.1f} s, peak {chips_peak:.0f} MB", flush=True)
    shutil.rmtree(fresh)  # created above by this run
    print(f"whole tile predict: {whole_tile_rate:.2f} Mpx/s, window {window_rate:.2f}", flush=True)
    return {
        "benchmark": "scale_native",
        "command": "python -m benchmarks.scale_native " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "logical_cpus": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "fixture": {
            "items": ITEMS,
            "grid": "10 m bands 10980 x 10980 px, 20 m SCL 5490 x 5490 px",
            "aoi_lonlat": list(AOI),
            "aoi_pixels_10m": aoi_px,
        },
        "seconds": {
            "aoi_ingest_eoforge": _summary(eo),
            "aoi_ingest_odc_stac": _summary(odc),
            "aoi_pipeline": pipe_s,
            "whole_tile_predict_command": pred_s,
            "whole_tile_infer_stage": infer_s,
            "whole_tile_model_runs": done["model_seconds"],
            "whole_tile_drift_profile": done["drift_seconds"],
            "whole_tile_chips": chips_s,
        },
        "memory_mb": {
            "aoi_ingest_eoforge_peak": max(p for _, p in ingest["runs"]["eoforge"]),
            "aoi_ingest_odc_stac_peak": max(p for _, p in ingest["runs"]["odc_stac"]),
            "aoi_pipeline_peak": pipe_peak,
            "whole_tile_predict_peak": pred_peak,
            "whole_tile_chips_peak": chips_peak,
        },
        "pixels": {
            "cube_eoforge": ingest["pixels"]["eoforge"],
            "cube_odc_stac": ingest["pixels"]["odc_stac"],
            "whole_tile": tile_px,
        },
        "whole_tile_chips": chips_counts,
        "mpx_per_s": {
            "whole_tile_predict": whole_tile_rate,
            "window_rate": window_rate,
            "window_rate_before_predict": batch_mpx / statistics.median(before),
            "window_rate_after_predict": batch_mpx / statistics.median(after),
            "whole_tile_model_in_predict": model_rate,
        },
        "ratios": {
            "ingest_vs_odc_stac": statistics.median(eo) / statistics.median(odc),
            "cube_pixels_vs_aoi": ingest["pixels"]["eoforge"] / aoi_px,
            "whole_tile_vs_window_rate": whole_tile_rate / window_rate,
            # that ratio = 1 / overlap x model share x (model in predict / window rate)
            "whole_tile_window_overlap": done["window_pixels"] / done["pixels"],
            "whole_tile_model_share": done["model_seconds"] / infer_s,
            # against the model's own rate inside the same predict (overlap and share only):
            # no separate measurement, so no spell of the machine's speed between them
            "whole_tile_vs_model_in_predict": whole_tile_rate / model_rate,
        },
        "aoi_pipeline_metrics": {
            k: metrics[k]
            for k in ("miou", "pixel_accuracy", "baseline_miou", "baseline_pixel_accuracy")
        },
    }


def main(argv: list[str] | None = None) -> int:
    global SAMPLE  # read by the steps below
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/eoforge-scale-native"), help="work folder"
    )
    parser.add_argument("--repeats", type=int, default=3, help="ingest repeats (interleaved)")
    parser.add_argument(
        "--sample", type=Path, default=SAMPLE, help="the full sample's static catalog folder"
    )
    args = parser.parse_args(argv)
    if not (args.sample / "collection.json").is_file():
        print(
            f"the full sample is not at {args.sample}: pass --sample DIR or set "
            "EOFORGE_FULL_SAMPLE (the s2-l2a-sample folder of the shared data)"
        )
        return 2
    SAMPLE = args.sample
    result = run(args)
    result["sample"] = str(args.sample)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "memory_mb", "ratios")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
