"""What to label next: points a human should label, picked from a run's uncertainty maps.

Each scene's uncertainty COG is read strip by strip (memory bounded by a strip, never the
scene) and cut into cells of ``cell`` pixels; the most uncertain pixel of each cell is a
candidate. Points are then chosen greedily by ``entropy * (1 - exp(-d / spread))``, where ``d``
is the distance to the nearest point already chosen or labelled: uncertainty first, with
spatial spread so that the N points are not N neighbours on one ambiguous field edge.
Already-labelled pixels are skipped; with ``explore`` a share of the points is drawn at random
instead (``eoforge suggest`` draws half: the mix that saved labels in
``benchmarks/active_learning.py``, where pure uncertainty sampling did worse than random). The
result is a GeoParquet of points in the
``labels.source`` points format (``class`` empty until a human fills it, ``item_id`` the scene).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from eoforge.errors import InputError
from eoforge.inference.scene_io import NODATA_CLASS
from eoforge.inference.uncertainty import UNCERTAINTY_SCALE
from eoforge.io.atomic import staged_file
from eoforge.labelling.scenes import RunScene, run_scenes

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["Candidates", "candidates", "suggest_points", "write_points"]

_POOL_PER_POINT = 200  # the greedy choice looks at the N * this most uncertain candidates


@dataclass
class Candidates:
    """Candidate pixels of all scenes (one per cell), in a common projected CRS."""

    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    entropy: npt.NDArray[np.float64]
    margin: npt.NDArray[np.float64]
    predicted: npt.NDArray[np.int64]
    scene: npt.NDArray[np.int64]
    crs: str


def _scene_candidates(
    scene: RunScene, cell: int, edge: int
) -> tuple[npt.NDArray[np.float64], ...] | None:
    """(col, row, entropy, margin, class) of the most uncertain pixel of each cell, skipping
    pixels within ``edge`` px of nodata (the model saw missing data there, not a hard case)."""
    from scipy.ndimage import binary_erosion

    out: list[tuple[int, int, float, float, int]] = []
    with rasterio.open(scene.uncertainty) as unc, rasterio.open(scene.prediction) as pred:
        height, width = unc.height, unc.width
        for top in range(0, height, cell):
            rows = min(cell, height - top)
            window = Window(0, top, width, rows)
            ent, mar = unc.read(window=window).astype(np.int32)
            cls = pred.read(1, window=window)
            # validity with ``edge`` rows of context above and below (outside the scene: nodata)
            lo, hi = max(0, top - edge), min(height, top + rows + edge)
            around = pred.read(1, window=Window(0, lo, width, hi - lo)) != NODATA_CLASS
            around = np.pad(around, ((lo - (top - edge), top + rows + edge - hi), (0, 0)))
            if edge > 0:
                around = binary_erosion(around, np.ones((2 * edge + 1,) * 2), border_value=0)
            ok = around[edge : edge + rows] & (ent != NODATA_CLASS)
            ent[~ok] = -1
            n_cells = -(-width // cell)
            pad = n_cells * cell - width
            grid = np.pad(ent, ((0, 0), (0, pad)), constant_values=-1)
            blocks = grid.reshape(rows, n_cells, cell).transpose(1, 0, 2).reshape(n_cells, -1)
            best = blocks.argmax(axis=1)
            for c, b in enumerate(best):
                if blocks[c, b] < 0:
                    continue
                r, cc = divmod(int(b), cell)
                col = c * cell + cc
                out.append((col, top + r, ent[r, col], mar[r, col], int(cls[r, col])))
    if not out:
        return None
    a = np.array(out, np.float64)
    return a[:, 0], a[:, 1], a[:, 2] * UNCERTAINTY_SCALE, a[:, 3] * UNCERTAINTY_SCALE, a[:, 4]


def candidates(scenes: list[RunScene], cell: int = 8, edge: int = 8) -> Candidates:
    """The candidate pixels of ``scenes`` (see module doc), in the first scene's CRS; none
    within ``edge`` pixels of nodata or the scene border.

    Raises:
        InputError: ``cell`` < 1, or no scene has a single valid pixel.
    """
    if cell < 1 or edge < 0:
        raise InputError(f"cell={cell} must be >= 1 and edge={edge} >= 0 pixels.")
    parts: list[tuple[npt.NDArray[np.float64], ...]] = []
    crs: str | None = None
    for k, scene in enumerate(scenes):
        found = _scene_candidates(scene, cell, edge)
        if found is None:
            continue
        col, row, ent, mar, cls = found
        with rasterio.open(scene.prediction) as src:
            xs, ys = rasterio.transform.xy(src.transform, row, col)
            scene_crs = src.crs.to_string()
        crs = crs or scene_crs
        xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        if scene_crs != crs:
            xs, ys = Transformer.from_crs(scene_crs, crs, always_xy=True).transform(xs, ys)
        parts.append((xs, ys, ent, mar, cls, np.full(len(xs), k, np.float64)))
    if not parts or crs is None:
        raise InputError("no predicted scene of the run has a single valid pixel to suggest.")
    x, y, ent, mar, cls, scene_idx = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Candidates(x, y, ent, mar, cls.astype(np.int64), scene_idx.astype(np.int64), crs)


def choose(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    score: npt.NDArray[np.float64],
    n: int,
    spread: float,
    taken_x: npt.NDArray[np.float64] | None = None,
    taken_y: npt.NDArray[np.float64] | None = None,
) -> list[int]:
    """Greedy choice of ``n`` indices by ``score * (1 - exp(-d / spread))`` (module doc);
    ``spread`` 0 is pure uncertainty sampling."""
    d = np.full(len(x), np.inf)
    if taken_x is not None and taken_y is not None:
        for tx, ty in zip(taken_x, taken_y, strict=True):
            np.minimum(d, np.hypot(x - tx, y - ty), out=d)
    chosen: list[int] = []
    available = np.ones(len(x), bool)
    for _ in range(min(n, len(x))):
        weight = 1.0 - np.exp(-d / spread) if spread > 0 else np.ones(len(x))
        value = np.where(available, score * weight + 1e-9 * score, -np.inf)
        i = int(np.argmax(value))
        if not np.isfinite(value[i]):
            break
        chosen.append(i)
        available[i] = False
        np.minimum(d, np.hypot(x - x[i], y - y[i]), out=d)
    return chosen


def suggest_points(
    run_dir: Path,
    n: int,
    *,
    labelled: Path | None = None,
    spread_m: float = 1000.0,
    cell: int = 8,
    edge: int = 8,
    explore: float = 0.0,
    seed: int = 0,
) -> gpd.GeoDataFrame:
    """The ``n`` points of ``run_dir`` to label next, best first (see module doc).

    Args:
        run_dir: a finished ``eoforge run`` / ``eoforge predict`` folder.
        n: how many points.
        labelled: points already labelled (any vector file of points): their pixels are
            skipped and they count as chosen for the spread.
        spread_m: distance (metres of the first scene's CRS) below which nearby points lose
            weight; 0 = uncertainty only.
        cell: candidate cell size in pixels (one candidate per cell).
        edge: pixels near nodata or the scene border skipped (the model saw padding there).
        explore: share of the points drawn at random among the candidates instead (ranked
            alternately with the uncertain ones): pure uncertainty sampling skews the labels
            towards rare, ambiguous pixels (see ``benchmarks/active_learning.py``).
        seed: of the random draw.

    Returns:
        Points in EPSG:4326 with ``rank`` (1 = first), ``item_id``, ``class`` (empty),
        ``predicted``, ``entropy``, ``margin`` and ``reason`` (``uncertain`` or ``random``).

    Raises:
        InputError: bad ``n``, ``spread_m``, ``explore`` or run folder, or an unreadable
            ``labelled`` file.
    """
    import geopandas as gpd

    if n < 1:
        raise InputError(f"n={n} must be >= 1 (how many points to suggest).")
    if spread_m < 0:
        raise InputError(f"spread={spread_m} must be >= 0 metres.")
    if not 0 <= explore <= 1:
        raise InputError(f"explore={explore} must be a share between 0 and 1.")
    scenes = run_scenes(run_dir)
    cand = candidates(scenes, cell, edge)
    tx = ty = None
    if labelled is not None:
        try:
            done = gpd.read_file(labelled) if not str(labelled).endswith(".parquet") else None
            done = done if done is not None else gpd.read_parquet(labelled)
        except Exception as exc:
            raise InputError(
                f"labelled points '{labelled}' could not be read ({exc}); pass a GeoParquet or "
                "GeoJSON of points with a CRS."
            ) from exc
        if done.crs is None:
            raise InputError(f"labelled points '{labelled}' have no CRS; set one (EPSG:4326).")
        done = done.to_crs(cand.crs)
        tx, ty = done.geometry.x.to_numpy(), done.geometry.y.to_numpy()
        with rasterio.open(scenes[0].prediction) as src:
            pixel = abs(src.transform.a)
        near = np.zeros(len(cand.x), bool)
        for px, py in zip(tx, ty, strict=True):
            near |= np.hypot(cand.x - px, cand.y - py) < pixel
        cand.entropy = np.where(near, -np.inf, cand.entropy)
    pool = np.argsort(-cand.entropy, kind="stable")[: n * _POOL_PER_POINT]
    pool = pool[np.isfinite(cand.entropy[pool])]
    n_random = round(n * explore)
    chosen = choose(cand.x[pool], cand.y[pool], cand.entropy[pool], n - n_random, spread_m, tx, ty)
    uncertain = pool[chosen] if chosen else np.zeros(0, np.int64)
    eligible = np.setdiff1d(np.flatnonzero(np.isfinite(cand.entropy)), uncertain)
    drawn = np.random.default_rng(seed).choice(
        eligible, min(n_random, len(eligible)), replace=False
    )
    # alternate the two kinds, so that a labeller who stops early still has the mix
    slots = [(2 * i, "uncertain", j) for i, j in enumerate(uncertain)]
    slots += [(2 * i + 1, "random", j) for i, j in enumerate(drawn)]
    slots.sort()
    picked = np.array([j for _, _, j in slots], np.int64)
    reasons = [r for _, r, _ in slots]
    frame = gpd.GeoDataFrame(
        {
            "rank": np.arange(1, len(picked) + 1),
            "item_id": [scenes[s].item_id for s in cand.scene[picked]],
            "class": [None] * len(picked),
            "predicted": [
                scenes[s].classes[c] if c < len(scenes[s].classes) else str(c)
                for s, c in zip(cand.scene[picked], cand.predicted[picked], strict=True)
            ],
            "entropy": cand.entropy[picked].round(4),
            "margin": cand.margin[picked].round(4),
            "reason": reasons,
        },
        geometry=gpd.points_from_xy(cand.x[picked], cand.y[picked]),
        crs=cand.crs,
    ).to_crs("EPSG:4326")
    frame["class"] = frame["class"].astype("string")
    return frame


def write_points(frame: gpd.GeoDataFrame, out: Path) -> Path:
    """Write points as GeoParquet, atomically (a reader never sees half a file)."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise InputError(f"'{out}' must end in .parquet (the points are written as GeoParquet).")
    with staged_file(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return out
