"""eoforge suggest: uncertain points, spread apart, skipping labelled ones, as labels.source
points with a quicklook sheet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image

from eoforge.errors import InputError
from eoforge.labelling.scenes import run_scenes
from eoforge.labelling.suggest import choose, suggest_points
from eoforge.labels.points import PointLabels


def _entropy_at(run: Path, frame: gpd.GeoDataFrame) -> np.ndarray:
    values = []
    for _, p in frame.iterrows():
        with rasterio.open(run / "uncertainty" / f"{p['item_id']}.tif") as src:
            pts = gpd.GeoSeries([p.geometry], crs=4326).to_crs(src.crs)
            values.append(next(src.sample([(pts.x[0], pts.y[0])]))[0] / 254)
    return np.array(values)


def test_choose_mixes_uncertainty_with_spread() -> None:
    x = np.array([0.0, 1.0, 2.0, 100.0])
    y = np.zeros(4)
    score = np.array([1.0, 0.99, 0.98, 0.5])
    assert choose(x, y, score, 2, spread=0.0) == [0, 1]  # uncertainty only: neighbours
    assert choose(x, y, score, 2, spread=10.0) == [0, 3]  # spread: the far point next
    # a labelled point next to the best one pushes the choice away from it
    assert choose(x, y, score, 1, 10.0, np.array([0.5]), np.array([0.0])) == [3]


def test_suggested_points_are_the_uncertain_ones(tiny_run: Path, tmp_path: Path) -> None:
    points = suggest_points(tiny_run, 12, spread_m=2000)
    assert points["rank"].tolist() == list(range(1, 13))
    assert set(points["item_id"]) <= {s.item_id for s in run_scenes(tiny_run)}
    # each point's entropy is what its uncertainty COG says, and far above the scene's median
    assert np.allclose(_entropy_at(tiny_run, points), points["entropy"], atol=1e-3)
    with rasterio.open(tiny_run / "uncertainty" / f"{points['item_id'].iloc[0]}.tif") as src:
        ent = src.read(1)
    assert points["entropy"].min() > np.median(ent[ent != 255]) / 254 + 0.3
    # none next to the scene border, where the model saw padding rather than a hard case
    for _, p in points.iterrows():
        with rasterio.open(tiny_run / "predictions" / f"{p['item_id']}.tif") as src:
            pt = gpd.GeoSeries([p.geometry], crs=4326).to_crs(src.crs)
            row, col = src.index(pt.x[0], pt.y[0])
            assert 8 <= row < src.height - 8 and 8 <= col < src.width - 8
    # spread: no two points closer than a few pixels
    utm = points.to_crs(32633)
    d = utm.geometry.apply(lambda g: utm.geometry.distance(g).replace(0, np.inf).min())
    assert d.min() > 240

    # already labelled points (in the labels.source format) are skipped
    done = points.iloc[:3].assign(**{"class": "water"})
    done.to_parquet(tmp_path / "done.parquet")
    PointLabels(str(tmp_path / "done.parquet")).load()  # a valid labels.source
    again = suggest_points(tiny_run, 12, labelled=tmp_path / "done.parquet", spread_m=2000)
    first = set(points.geometry.iloc[:3].to_wkt())
    assert not first & set(again.geometry.to_wkt())

    with pytest.raises(InputError, match="n=0"):
        suggest_points(tiny_run, 0)
    with pytest.raises(InputError, match="no predictions"):
        suggest_points(tmp_path, 3)


def test_suggest_command_writes_points_and_sheet(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "next.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "eoforge.cli", "suggest", str(tiny_run), "--n", "8",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    frame = gpd.read_parquet(out)
    assert len(frame) == 8 and frame.crs.to_epsg() == 4326
    assert {"class", "item_id", "rank", "entropy", "margin", "predicted"} <= set(frame.columns)
    with Image.open(out.with_suffix(".png")) as png:
        assert png.width > 600 and png.height > 200
    bad = subprocess.run(
        [sys.executable, "-m", "eoforge.cli", "suggest", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "no predictions" in bad.stderr


def test_explore_mixes_random_points_in_alternately(tiny_run: Path) -> None:
    pure = suggest_points(tiny_run, 6, spread_m=2000)
    assert (pure["reason"] == "uncertain").all()
    mixed = suggest_points(tiny_run, 6, spread_m=2000, explore=0.5, seed=1)
    assert mixed["reason"].tolist() == ["uncertain", "random"] * 3
    # the uncertain half is the best of the pure list; the random half is less uncertain
    assert mixed["entropy"][mixed["reason"] == "uncertain"].tolist() == pure["entropy"][:3].tolist()
    assert mixed["entropy"][mixed["reason"] == "random"].mean() < pure["entropy"].mean()
    assert suggest_points(tiny_run, 6, explore=0.5, seed=1).equals(
        suggest_points(tiny_run, 6, explore=0.5, seed=1)
    )
    with pytest.raises(InputError, match="explore"):
        suggest_points(tiny_run, 3, explore=1.5)
