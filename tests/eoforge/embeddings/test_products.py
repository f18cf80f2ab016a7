"""Few-label classifiers (ONNX), clusters and similarity on the field of the real cube."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from eoforge.cube.tiles import CubeTile
from eoforge.embeddings.classify import (
    apply_classifier,
    export_classifier,
    fit_classifier,
    vectors_at,
)
from eoforge.embeddings.evaluate import TileTruth, draw_points, miou
from eoforge.embeddings.field import open_field_tile
from eoforge.embeddings.points import labelled_vectors
from eoforge.embeddings.unsupervised import cluster_map, fit_kmeans, query_vector, similarity_map
from eoforge.errors import InputError


@pytest.fixture(scope="module")
def truth(field: Path, cube_tiles: list[CubeTile]) -> TileTruth:
    return TileTruth(cube_tiles[0], open_field_tile(field, cube_tiles[0].grid.tile))


@pytest.mark.parametrize("kind", ["knn", "linear"])
def test_classifier_exports_and_maps_a_tile(
    kind: str, field: Path, truth: TileTruth, tmp_path: Path
) -> None:
    idx = draw_points(truth, 10, 0)
    x = truth.vec.reshape(-1, 16)[idx]
    y = truth.ref.ravel()[idx]
    model = fit_classifier(kind, x, y)
    sample = truth.vec[truth.scored][::97]
    exported = export_classifier(model, 16, tmp_path / "m.onnx", sample)
    assert exported["parity"] == 1.0
    tile = open_field_tile(field, truth_tile := "33TWL")
    sha, stats = apply_classifier(tmp_path / "m.onnx", tile, tmp_path / "c.tif")
    # through the CNN's inference path: 256 px windows streamed in strips, none overlapping
    windows = -(-tile.grid.height // 256) * -(-tile.grid.width // 256)
    assert stats["windows_run"] + stats["windows_skipped"] == windows and stats["windows_run"] > 0
    with rasterio.open(tmp_path / "c.tif") as src:
        classes = src.read(1)
        assert src.crs.to_string() == tile.grid.crs and src.nodata == 255
        assert src.block_shapes[0] == (512, 512)  # tiled like a COG
    assert len(sha) == 64 and truth_tile == tile.grid.tile
    assert set(np.unique(classes)) <= {0, 1, 2, 255}
    np.testing.assert_array_equal(classes == 255, ~truth.ok)
    # the map is the classifier's own prediction, and better than chance on the reference
    np.testing.assert_array_equal(classes[truth.ok], model.predict(truth.vec[truth.ok]))
    assert miou(classes[truth.scored], truth.ref[truth.scored]) > 0.2


def test_scene_model_keeps_class_values_of_classes_without_points(
    field: Path, truth: TileTruth, tmp_path: Path
) -> None:
    """Points of classes 0 and 2 only: the map holds 0 and 2 (never 1), as scikit-learn says,
    and the ONNX file is a scene model the inference session accepts (image -> logits)."""
    import onnxruntime as ort

    idx = draw_points(truth, 8, 1)
    keep = idx[truth.ref.ravel()[idx] != 1]
    model = fit_classifier("linear", truth.vec.reshape(-1, 16)[keep], truth.ref.ravel()[keep])
    exported = export_classifier(model, 16, tmp_path / "m.onnx", truth.vec[truth.ok][::50], 3)
    assert exported["classes"] == [0, 2] and exported["n_classes"] == 3
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert sess.get_outputs()[0].name == "logits" and sess.get_outputs()[0].shape[1] == 3
    tile = open_field_tile(field, "33TWL")
    apply_classifier(tmp_path / "m.onnx", tile, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as src:
        classes = src.read(1)
    assert set(np.unique(classes[truth.ok])) <= {0, 2}
    np.testing.assert_array_equal(classes[truth.ok], model.predict(truth.vec[truth.ok]))
    with pytest.raises(InputError, match="only 2 classes are named"):
        export_classifier(model, 16, tmp_path / "m2.onnx", truth.vec[truth.ok][::50], 2)


def test_one_class_or_unknown_kind_is_refused() -> None:
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(InputError, match="at least two"):
        fit_classifier("knn", x, np.zeros(4, np.int64))
    with pytest.raises(InputError, match="not one of"):
        fit_classifier("svm", x, np.arange(4))


def test_labelled_points_read_the_vectors_under_them(
    field: Path, truth: TileTruth, tmp_path: Path
) -> None:
    tile = open_field_tile(field, "33TWL")
    rows, cols = np.array([10, 200, 300]), np.array([20, 100, 400])
    xs, ys = tile.grid.transform * (cols + 0.5, rows + 0.5)
    frame = gpd.GeoDataFrame({"class": ["vegetation", "bare", "water"]},
                             geometry=gpd.points_from_xy(xs, ys), crs=tile.grid.crs)  # fmt: skip
    path = tmp_path / "points.geojson"
    frame.to_crs("EPSG:4326").to_file(path)
    x, y = labelled_vectors(path, "class", ("vegetation", "bare", "water"), [tile])
    want, ok = vectors_at(tile, rows, cols)
    np.testing.assert_allclose(x, want[ok], atol=1e-5)
    np.testing.assert_array_equal(y, np.arange(3)[ok])
    with pytest.raises(InputError, match="not among the classes"):
        labelled_vectors(path, "class", ("vegetation", "bare"), [tile])
    with pytest.raises(InputError, match="no column"):
        labelled_vectors(path, "landcover", ("vegetation",), [tile])


def test_clusters_and_similarity(field: Path, truth: TileTruth, tmp_path: Path) -> None:
    tile = open_field_tile(field, "33TWL")
    km = fit_kmeans([tile], 5, seed=0)
    cluster_map(km, tile, tmp_path / "k.tif")
    with rasterio.open(tmp_path / "k.tif") as src:
        labels = src.read(1)
    assert set(np.unique(labels[truth.ok])) <= set(range(5)) and (labels[~truth.ok] == 255).all()

    r, c = np.argwhere(truth.ok)[len(np.argwhere(truth.ok)) // 2]
    x, y = tile.grid.transform * (c + 0.5, r + 0.5)
    q = query_vector(tile, shapely.Point(x, y))
    similarity_map(q, tile, tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif") as src:
        sim = src.read(1)
    assert sim[r, c] == pytest.approx(1.0, abs=0.02)
    assert np.nanmax(sim) <= 1.02 and np.isnan(sim[~truth.ok]).all()
    poly = shapely.box(x - 500, y - 500, x + 500, y + 500)
    assert np.linalg.norm(query_vector(tile, poly)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="covers no pixel"):
        query_vector(tile, shapely.Point(0, 0))
