"""What the sliding window's overlap costs and buys: seams against a seamless map, and speed.

    python -m benchmarks.overlap --model-dir MODEL_DIR --json OUT

Needs a trained model (``make demo`` writes one to ``demo/model``): how far a window's border
disturbs its predictions is a property of trained weights, not of the architecture alone.
For every real scene of the sample (``--sample``: the 915 px scenes of ``../shared/data`` when
present, else the bundled 512 px ones) the reference is the *seamless* map: the whole scene in
one window, no blending. Each overlap is then run at ``--window`` (small enough that a scene
holds several windows per axis, so every seam is measured) and scored by the share of valid
pixels whose class differs from the seamless map, and by mIoU against the scene's Sen2Cor
classes (``LabelSpec`` grouping), per tile. A window twice as wide has half the seams per
pixel, so the disagreement at the product's 512 px is about half the one measured here.

Speed: the same overlaps at the product window (``InferSpec().window``, batch as configured)
over a strip as wide as a 10980 px Sentinel-2 tile and two windows high, tiled from a real
scene, timed round-robin in one process run, and the number of windows each overlap puts on a
whole tile (the predictor's own window plan; the count per axis is a whole number, so
neighbouring overlaps may need the same windows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._scenes import NullWriter, TiledScene
from benchmarks._timing import interleaved_seconds
from benchmarks.inference import folder_bands
from eoforge.config import BUNDLED_CATALOG, ChipSpec, InferSpec, LabelSpec
from eoforge.inference.predict import predict_raster, predict_scene
from eoforge.inference.session import open_session
from eoforge.inference.windows import _axis_plan
from eoforge.training.metrics import confusion_matrix, metrics_from_confusion

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "s2-l2a-sample"
S2_TILE_PX = 10980


def _scenes(sample: Path) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """tile -> [(item, bands (4, H, W) uint16, Sen2Cor classes (H, W))], items sorted."""
    tiles: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for folder in sorted(p for p in sample.iterdir() if (p / "SCL.tif").is_file()):
        bands, labels = folder_bands(folder)
        tile = folder.name.split("_")[1]
        tiles.setdefault(tile, []).append((folder.name, bands, labels))
    return tiles


def _seams(session: Any, tiles: dict[str, Any], window: int, overlaps: list[int]) -> dict[str, Any]:
    names = list(LabelSpec().classes)
    k = len(names)
    out: dict[str, Any] = {}
    for tile, scenes in tiles.items():
        edge = max(max(b.shape[1:]) for _, b, _ in scenes)
        seamless = InferSpec(window=-(-edge // 16) * 16, overlap=0, batch_size=1)
        refs = [predict_scene(session, b, seamless) for _, b, _ in scenes]
        valid = sum(int((r != 255).sum()) for r in refs)
        cm = sum(confusion_matrix(lab, r, k) for (_, _, lab), r in zip(scenes, refs, strict=True))
        rows: dict[str, Any] = {"seamless_miou": metrics_from_confusion(cm, names)["miou"]}
        for overlap in overlaps:
            spec = InferSpec(window=window, overlap=overlap)
            maps = [predict_scene(session, b, spec) for _, b, _ in scenes]
            differ = sum(
                int(((m != r) & (r != 255)).sum()) for m, r in zip(maps, refs, strict=True)
            )
            cm = sum(
                confusion_matrix(lab, m, k) for (_, _, lab), m in zip(scenes, maps, strict=True)
            )
            rows[str(overlap)] = {
                "pixels_differing_from_seamless": differ,
                "share_differing_from_seamless": differ / max(valid, 1),
                "miou": metrics_from_confusion(cm, names)["miou"],
            }
            print(
                f"{tile} window {window} overlap {overlap:3d}: "
                f"{differ / max(valid, 1):.2e} of pixels differ from the seamless map, "
                f"mIoU {rows[str(overlap)]['miou']:.4f}",
                flush=True,
            )
        out[tile] = {"items": [i for i, _, _ in scenes], "valid_pixels": valid, **rows}
    return out


def _speed(
    session: Any, tile: np.ndarray, overlaps: list[int], window: int, width: int, repeats: int
) -> dict[str, Any]:
    base = InferSpec(window=window)
    height = 2 * window - max(overlaps)  # two window rows for every overlap
    scene = TiledScene(tile, height, width)
    fns = {
        str(o): (
            lambda o=o: predict_raster(
                session, scene, InferSpec(window=base.window, overlap=o, batch_size=base.batch_size),
                NullWriter(),
            )
        )
        for o in overlaps
    }  # fmt: skip
    times = interleaved_seconds(fns, repeats)
    out: dict[str, Any] = {}
    for o in overlaps:
        starts = _axis_plan(S2_TILE_PX, base.window, o, None)[2]
        t = times[str(o)]
        out[str(o)] = {
            "seconds": t,
            "mpx_per_s": height * width / 1e6 / t["median"],
            "windows_on_10980_tile": len(starts) ** 2,
            "window_pixels_vs_10980_tile": (len(starts) * base.window / S2_TILE_PX) ** 2,
        }
        print(
            f"window {base.window} overlap {o:3d}: {out[str(o)]['mpx_per_s']:.2f} Mpx/s on a "
            f"{height} x {width} px strip; {len(starts) ** 2} windows on a whole tile",
            flush=True,
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model_dir.resolve()
    if not (model / "model.onnx").is_file():
        raise SystemExit(
            f"--model-dir {model}: no model.onnx there; train one first (`make demo` writes "
            "demo/model) and pass its folder."
        )
    overlaps = sorted({int(o) for o in args.overlaps.split(",")})
    load_start = list(os.getloadavg())
    session = open_session(model / "model.onnx", args.threads, prefer_gpu=False)
    tiles = _scenes(args.sample)
    seams = _seams(session, tiles, args.window, overlaps)
    first = next(iter(tiles.values()))[0][1]
    speed = _speed(session, first, overlaps, args.speed_window, args.strip_width, args.repeats)
    return {
        "benchmark": "overlap",
        "command": "python -m benchmarks.overlap " + " ".join(sys.argv[1:]),
        "model": str(model),
        "sample": str(args.sample),
        "test_tiles": list(ChipSpec().test_tiles),
        "machine": {
            "logical_cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_at_start": load_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "seams": {"window": args.window, "by_tile": seams},
        "speed": {
            "window": args.speed_window,
            "strip_px": [2 * args.speed_window - max(overlaps), args.strip_width],
            "by_overlap": speed,
        },
        "default_overlap": InferSpec().overlap,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m benchmarks.overlap``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained model folder")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--sample",
        type=Path,
        default=SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else BUNDLED_CATALOG,
        help="folder of item folders (B02/B03/B04/B08/SCL.tif)",
    )
    parser.add_argument("--window", type=int, default=256, help="window of the seam study")
    parser.add_argument("--overlaps", default="0,16,32,48,64,96,128")
    parser.add_argument(
        "--speed-window", type=int, default=InferSpec().window, help="window of the timing"
    )
    parser.add_argument("--strip-width", type=int, default=S2_TILE_PX, help="timed strip (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="threads (default: usable CPUs)")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
