"""Chips benchmark: eoforge chip generation vs xbatcher, eoforge's loader vs rasterio windows.

    python -m benchmarks.chips [--json OUT] [--catalog DIR] [--repeats 5]

Measured side by side in one process run, on this machine, medians of ``--repeats`` runs, on a
real sample loaded into a Zarr cube with ``eoforge.cube.build.write_cube`` (not timed): by default
the mini sample the repository ships (``eoforge.config.BUNDLED_CATALOG``, 2 tiles x 5 dates,
512 x 512 px at 120 m), so a fresh clone runs it; ``--catalog`` takes another static catalog,
e.g. the full sample (915 x 915 px, ``s2-l2a-sample`` of the shared data). The JSON records
which catalog, and its size, under ``sample``.

1. **Chip generation.** The same chips, every 64 px window of a regular grid of every slice
   (x: 4 bands uint16, y: grouped SCL classes uint8), as numpy arrays, by
   - xbatcher ``BatchGenerator(ds, input_dims={"y": 64, "x": 64})`` over the cube as
     ``xr.open_zarr`` gives it (lazy, dask-backed: xbatcher's usual input), timed on an even
     sample of its batches (a full pass takes over a minute) and reported as chips/s;
   - xbatcher over the cube loaded into memory first (``.load()``), with and without the load;
   - eoforge: :mod:`eoforge.cube.tiles` reads each tile once, :func:`eoforge.chips.cut.gather_windows`
     cuts all windows in one fancy-index (from Zarr, and from memory);
   - and eoforge's whole chips stage, :func:`eoforge.chips.cut.build_chips` (filters, splits, index,
     Zarr write), for scale.
   Both sides' chips are checked equal.
2. **Training loader.** The train chips of a ``build_chips`` store read as torch batches
   ``(x float32, y int64)`` by :func:`eoforge.chips.torch_data.chip_loader` (cold per-process cache, and
   a warm second epoch), vs per-sample reads from the source COGs the way TorchGeo's
   ``RasterDataset`` reads (cached file handles, ``rasterio.merge.merge`` over the chip's bounds,
   one call per band file), and vs plain ``DatasetReader.read(window=...)`` per band. Samples
   are checked equal. Single process, no augmentation, batch size 32.

``ratios`` in the JSON: ``chips_vs_xbatcher`` (eoforge from Zarr vs xbatcher on the lazily
opened cube), ``chips_vs_xbatcher_preloaded`` (both from Zarr, xbatcher's load included),
``chips_vs_xbatcher_in_memory`` (both from memory), ``loader_vs_rasterio_windows``
(TorchGeo-style reads), ``loader_vs_rasterio_plain_windows``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._timing import median_seconds
from eoforge.config import BUNDLED_CATALOG, ChipSpec, LabelSpec
from eoforge.labels.classes import scl_lookup

#: The data the repository ships: the benchmark runs on a fresh clone.
DEFAULT_CATALOG = BUNDLED_CATALOG
BANDS = ("blue", "green", "red", "nir")
BAND_FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "scl": "SCL"}
SIZE = 64


def load_cube(catalog: Path, out: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """Write the static catalog's items into a Zarr cube; return it and item -> asset paths."""
    from eoforge.cube.build import write_cube
    from eoforge.stac.server import prepare_served_catalog

    with tempfile.TemporaryDirectory() as tmp:
        files = prepare_served_catalog(catalog, Path(tmp))
        items = [json.loads(p.read_text()) for p in files[1:]]
    write_cube(items, [*BANDS, "scl"], out)
    assets = {
        str(it["id"]): {
            key: str(it["assets"][key]["href"]).removeprefix("file://") for key in BAND_FILES
        }
        for it in items
    }
    return out, assets


# --------------------------------------------------------------------------- chip generation


def _grid(n_time: int, h: int, w: int) -> tuple[np.ndarray, ...]:
    rows = np.arange(0, h - SIZE + 1, SIZE)
    cols = np.arange(0, w - SIZE + 1, SIZE)
    t, r, c = np.meshgrid(np.arange(n_time), rows, cols, indexing="ij")
    return t.ravel(), r.ravel(), c.ravel()


def eoforge_cut(tiles: dict[str, tuple[np.ndarray, np.ndarray]], lut: np.ndarray) -> dict[str, Any]:
    """All grid chips of in-memory tiles with eoforge's gather (x: (n,c,s,s), y: (n,s,s))."""
    from eoforge.chips.cut import gather_windows

    out = {}
    for tile, (cube_x, scl) in tiles.items():
        t, r, c = _grid(cube_x.shape[0], cube_x.shape[2], cube_x.shape[3])
        x = gather_windows(cube_x, t, r, c, SIZE)
        y = lut[gather_windows(scl, t, r, c, SIZE)]
        out[tile] = (x, y, np.stack([t, r, c], axis=1))
    return out


def eoforge_read(cube: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each tile's bands (t, c, h, w) and SCL (t, h, w), read once with eoforge.cube.tiles."""
    from eoforge.cube.tiles import iter_cube_tiles

    tiles = {}
    for tile in iter_cube_tiles(str(cube)):
        x = np.stack([tile.variable(b) for b in BANDS], axis=1)
        tiles[tile.grid.tile] = (x, tile.variable("scl"))
    return tiles


def xbatcher_cut(datasets: dict[str, Any], lut: np.ndarray, every: int = 1) -> dict[str, Any]:
    """The same chips with xbatcher: one batch per 64 px window, all slices; every n-th batch."""
    import xbatcher

    out = {}
    for tile, ds in datasets.items():
        gen = xbatcher.BatchGenerator(
            ds[[*BANDS, "scl"]], input_dims={"y": SIZE, "x": SIZE}, input_overlap={"y": 0, "x": 0}
        )
        xs, ys, origins = [], [], []
        n_cols = (ds.sizes["x"] - SIZE) // SIZE + 1
        for i in range(0, len(gen), every):
            batch = gen[i]
            xs.append(np.stack([batch[b].values for b in BANDS], axis=1))  # (t, c, s, s)
            ys.append(lut[batch["scl"].values])
            r, c = divmod(i, n_cols)
            n_t = batch.sizes["time"]
            origins.append(
                np.stack([np.arange(n_t), np.full(n_t, r * SIZE), np.full(n_t, c * SIZE)], 1)
            )
        out[tile] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(origins))
    return out


def _same_chips(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for tile in a:
        xa, ya, oa = a[tile]
        xb, yb, ob = b[tile]
        ka = np.lexsort(oa.T[::-1])
        kb = np.lexsort(ob.T[::-1])
        if not (
            np.array_equal(oa[ka], ob[kb])
            and np.array_equal(xa[ka], xb[kb])
            and np.array_equal(ya[ka], yb[kb])
        ):
            return False
    return True


def bench_generation(cube: Path, repeats: int, lazy_batches: int) -> dict[str, Any]:
    """Section 1: see module doc."""
    import xarray as xr

    from eoforge.chips.cut import build_chips
    from eoforge.cube.tiles import list_cube_tiles

    lut = scl_lookup(LabelSpec())
    tiles = list_cube_tiles(str(cube))

    def open_lazy() -> dict[str, Any]:
        return {t: xr.open_zarr(cube, group=t, consolidated=False) for t in tiles}

    def xb_preloaded() -> dict[str, Any]:
        return xbatcher_cut({t: ds.load() for t, ds in open_lazy().items()}, lut)

    loaded = {t: ds.load() for t, ds in open_lazy().items()}
    arrays = eoforge_read(cube)
    reference = eoforge_cut(arrays, lut)
    n_chips = sum(len(v[0]) for v in reference.values())
    chip_bytes = sum(v[0].nbytes + v[1].nbytes for v in reference.values()) / n_chips
    same = _same_chips(reference, xbatcher_cut(loaded, lut))

    # the lazy pass is slow: time an even sample of its batches, report a rate
    windows = sum(len(reference[t][0]) // len(arrays[t][0]) for t in tiles)  # xbatcher batches
    every = max(1, windows // max(1, lazy_batches))
    lazy_times, lazy_chips = [], 0
    for _ in range(max(1, repeats // 2)):
        t0 = time.perf_counter()
        sampled = xbatcher_cut(open_lazy(), lut, every)
        lazy_times.append(time.perf_counter() - t0)
        lazy_chips = sum(len(v[0]) for v in sampled.values())
    lazy_s = statistics.median(lazy_times)

    timings = {
        "xbatcher_lazy": lazy_s * n_chips / lazy_chips,  # extrapolated from its own rate
        "xbatcher_preloaded": median_seconds(xb_preloaded, repeats),
        "xbatcher_in_memory": median_seconds(lambda: xbatcher_cut(loaded, lut), repeats),
        "eoforge_from_zarr": median_seconds(lambda: eoforge_cut(eoforge_read(cube), lut), repeats),
        "eoforge_in_memory": median_seconds(lambda: eoforge_cut(arrays, lut), repeats),
    }
    work = Path(tempfile.mkdtemp(prefix="eoforge-bench-chips-"))
    runs = iter(range(10_000))

    def build() -> Any:
        return build_chips(
            cube, work / f"c{next(runs)}.zarr", ChipSpec.model_validate({}), LabelSpec(), BANDS
        )

    build_s = median_seconds(build, repeats)
    built = build()
    shutil.rmtree(work, ignore_errors=True)
    n_built = sum(built.counts.values())
    return {
        "chips": n_chips,
        "chip_bytes": chip_bytes,
        "same_chips": same,
        "lazy_sampled_chips": lazy_chips,
        "seconds": timings,
        "build_chips": {"seconds": build_s, "chips": n_built, "counts": built.counts},
    }


# --------------------------------------------------------------------------- loader


class RasterioWindows:
    """Per-sample reads from the source COGs, the way TorchGeo's RasterDataset does them.

    One (cached) file handle per band file; each sample merges the chip's bounds out of every
    band file with ``rasterio.merge.merge`` (``merge=True``) or reads the pixel window
    (``merge=False``).
    """

    def __init__(self, assets: dict[str, dict[str, str]], lut: np.ndarray, merge: bool) -> None:
        self.assets = assets
        self.lut = lut
        self.merge = merge

    @staticmethod
    @functools.lru_cache(maxsize=128)
    def _open(path: str) -> Any:
        import rasterio

        return rasterio.open(path)

    def sample(self, item_id: str, row: int, col: int) -> tuple[Any, Any]:
        """One chip as torch tensors (x float32 (C, s, s), y int64 (s, s))."""
        import rasterio.merge
        import torch
        from rasterio.windows import Window

        paths = self.assets[item_id]
        layers = []
        for key in (*BANDS, "scl"):
            src = self._open(paths[key])
            if self.merge:
                t = src.transform
                x0, y1 = t * (col, row)
                x1, y0 = t * (col + SIZE, row + SIZE)
                data, _ = rasterio.merge.merge([src], bounds=(x0, y0, x1, y1), res=(t.a, -t.e))
                layers.append(data[0])
            else:
                layers.append(src.read(1, window=Window(col, row, SIZE, SIZE)))
        x = torch.from_numpy(np.stack(layers[:4]).astype(np.float32))
        y = torch.from_numpy(self.lut[layers[4]].astype(np.int64))
        return x, y


def bench_loader(cube: Path, assets: dict[str, dict[str, str]], repeats: int) -> dict[str, Any]:
    """Section 2: see module doc."""
    import torch

    from eoforge.chips.cut import build_chips
    from eoforge.chips.index import read_chip_index
    from eoforge.chips.torch_data import ChipDataset, chip_loader

    lut = scl_lookup(LabelSpec())
    work = Path(tempfile.mkdtemp(prefix="eoforge-bench-loader-"))
    store = work / "chips.zarr"
    build_chips(cube, store, ChipSpec.model_validate({}), LabelSpec(), BANDS)
    index = read_chip_index(store)
    train = index[index["split"] == "train"].sort_values("index")
    n = len(train)
    batch = 32

    def epoch(loader: Any) -> int:
        return sum(len(x) for x, _ in loader)

    def cold() -> int:  # a fresh loader: empty chunk cache, store opened anew
        return epoch(chip_loader(store, "train", batch_size=batch, augment=False, seed=0))

    warm_loader = chip_loader(store, "train", batch_size=batch, augment=False, seed=0)
    epoch(warm_loader)
    cold_s = median_seconds(cold, repeats)
    warm_s = median_seconds(lambda: epoch(warm_loader), repeats)

    rows = list(zip(train["item_id"], train["row"], train["col"], strict=True))
    rng = np.random.default_rng(0)
    picks = [rows[i] for i in rng.permutation(n)[: min(n, 384)]]
    merged = RasterioWindows(assets, lut, merge=True)
    plain = RasterioWindows(assets, lut, merge=False)

    def per_sample(reader: RasterioWindows, chosen: Sequence[tuple[str, int, int]]) -> None:
        for start in range(0, len(chosen), batch):
            samples = [
                reader.sample(i, int(r), int(c)) for i, r, c in chosen[start : start + batch]
            ]
            torch.stack([s[0] for s in samples])
            torch.stack([s[1] for s in samples])

    merge_s = median_seconds(lambda: per_sample(merged, picks), repeats)
    plain_s = median_seconds(lambda: per_sample(plain, rows), repeats)
    # the same samples both ways
    ds = ChipDataset(store, "train", augment=False)
    same = True
    for k in range(0, n, max(1, n // 16)):
        x, y = ds[k]
        for reader in (merged, plain):
            rx, ry = reader.sample(*rows[k])
            same &= bool(torch.equal(x, rx) and torch.equal(y, ry))
    shutil.rmtree(work, ignore_errors=True)
    sample_bytes = len(BANDS) * SIZE * SIZE * 2 + SIZE * SIZE
    return {
        "samples": n,
        "sample_bytes": sample_bytes,
        "same_samples": same,
        "samples_per_s": {
            "eoforge_loader_cold": n / cold_s,
            "eoforge_loader_warm": n / warm_s,
            "rasterio_torchgeo_style": len(picks) / merge_s,
            "rasterio_plain_windows": n / plain_s,
        },
    }


# --------------------------------------------------------------------------- report


def _sample(catalog: Path, assets: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Which data was measured: the catalog, its items and their pixel size."""
    import rasterio

    first = next(iter(assets.values()))
    with rasterio.open(next(iter(first.values()))) as src:
        height, width = src.shape
    return {
        "catalog": str(catalog),
        "bundled": catalog.resolve() == BUNDLED_CATALOG.resolve(),
        "items": len(assets),
        "pixels_per_asset": [height, width],
    }


def run(catalog: Path, repeats: int = 5, lazy_batches: int = 20) -> dict[str, Any]:
    """Run both sections on ``catalog`` and return the summary (see module doc)."""
    work = Path(tempfile.mkdtemp(prefix="eoforge-bench-cube-"))
    try:
        t0 = time.perf_counter()
        cube, assets = load_cube(catalog, work / "cube.zarr")
        load_s = time.perf_counter() - t0
        gen = bench_generation(cube, repeats, lazy_batches)
        loader = bench_loader(cube, assets, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sec = gen["seconds"]
    rates = loader["samples_per_s"]
    ratios = {
        "chips_vs_xbatcher": sec["xbatcher_lazy"] / sec["eoforge_from_zarr"],
        "chips_vs_xbatcher_preloaded": sec["xbatcher_preloaded"] / sec["eoforge_from_zarr"],
        "chips_vs_xbatcher_in_memory": sec["xbatcher_in_memory"] / sec["eoforge_in_memory"],
        "loader_vs_rasterio_windows": rates["eoforge_loader_cold"]
        / rates["rasterio_torchgeo_style"],
        "loader_vs_rasterio_plain_windows": rates["eoforge_loader_cold"]
        / rates["rasterio_plain_windows"],
    }
    import torch
    import xbatcher
    import zarr

    return {
        "ratios": ratios,
        "generation": gen,
        "loader": loader,
        "cube_load_seconds": load_s,
        "catalog": str(catalog),
        "sample": _sample(catalog, assets),
        "repeats": repeats,
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg()[0],
            "zarr": zarr.__version__,
            "xbatcher": xbatcher.__version__,
            "torch": torch.__version__,
        },
    }


def print_table(summary: dict[str, Any]) -> None:
    """A rich table of both sections."""
    from rich.console import Console
    from rich.table import Table

    gen = summary["generation"]
    n, per = gen["chips"], gen["chip_bytes"]
    table = Table(title=f"Chip generation: {n} chips of {SIZE} px (x 4 bands + y), same chips")
    for col in ("method", "median s", "chips/s", "MB/s", "eoforge faster by"):
        table.add_column(col, justify="right" if col != "method" else "left")
    sec = gen["seconds"]
    base = {
        "xbatcher_lazy": "eoforge_from_zarr",
        "xbatcher_preloaded": "eoforge_from_zarr",
        "xbatcher_in_memory": "eoforge_in_memory",
    }
    labels = {
        "xbatcher_lazy": f"xbatcher, lazy cube (rate on {gen['lazy_sampled_chips']} chips)",
        "xbatcher_preloaded": "xbatcher, cube .load()ed (load included)",
        "xbatcher_in_memory": "xbatcher, cube in memory",
        "eoforge_from_zarr": "eoforge, from Zarr (read + cut)",
        "eoforge_in_memory": "eoforge, in memory (cut)",
    }
    for key, label in labels.items():
        s = sec[key]
        ratio = f"{s / sec[base[key]]:.1f}x" if key in base else ""
        table.add_row(label, f"{s:.3f}", f"{n / s:,.0f}", f"{n * per / s / 1e6:,.0f}", ratio)
    b = gen["build_chips"]
    table.add_row(
        f"eoforge build_chips end to end ({b['chips']} kept)",
        f"{b['seconds']:.3f}",
        f"{n / b['seconds']:,.0f} cut",
        f"{n * per / b['seconds'] / 1e6:,.0f}",
        "",
    )
    console = Console()
    console.print(table)
    loader = summary["loader"]
    lt = Table(title=f"Training loader: {loader['samples']} train chips, batches of 32")
    for col in ("reader", "samples/s", "MB/s", "eoforge cold faster by"):
        lt.add_column(col, justify="right" if col != "reader" else "left")
    rates = loader["samples_per_s"]
    cold = rates["eoforge_loader_cold"]
    for key, label in (
        ("eoforge_loader_cold", "eoforge chip_loader, cold cache"),
        ("eoforge_loader_warm", "eoforge chip_loader, warm epoch"),
        ("rasterio_torchgeo_style", "rasterio merge per sample (TorchGeo-style)"),
        ("rasterio_plain_windows", "rasterio read(window) per sample"),
    ):
        r = rates[key]
        lt.add_row(
            label,
            f"{r:,.0f}",
            f"{r * loader['sample_bytes'] / 1e6:,.1f}",
            "" if key.startswith("eoforge") else f"{cold / r:.1f}x",
        )
    console.print(lt)
    checks = f"same chips: {gen['same_chips']}, same samples: {loader['same_samples']}"
    console.print(f"{checks}; load avg {summary['machine']['load_avg']:.1f}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lazy-batches", type=int, default=20, help="xbatcher lazy sample")
    args = parser.parse_args(argv)
    if not (args.catalog / "collection.json").is_file():
        parser.error(f"no STAC catalog at {args.catalog} (expected collection.json)")
    summary = run(args.catalog, args.repeats, args.lazy_batches)
    print_table(summary)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        print(f"wrote {args.json}")
    ok = summary["generation"]["same_chips"] and summary["loader"]["same_samples"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
