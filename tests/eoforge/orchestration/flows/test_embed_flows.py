"""The embedding product flows against a real Prefect server, on a field of the real cube."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio

from eoforge.cube.tiles import iter_cube_tiles
from eoforge.embeddings.encoder import EncoderConfig, sample_pixels, train_encoder
from eoforge.embeddings.field import open_field_tile, write_field

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def small_field(real_cube: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiles = list(iter_cube_tiles(str(real_cube)))
    refl, clear, doy = sample_pixels(tiles, per_tile=2000, seed=0)
    model = train_encoder(refl, clear, doy, EncoderConfig(dates=refl.shape[1], dims=8, epochs=1))
    out = tmp_path_factory.mktemp("field") / "field.zarr"
    write_field(tiles, model, out, encoder_sha256="flow-test")
    return out


def test_cluster_and_similarity_flows_publish_runs(
    prefect_harness: None, small_field: Path, tmp_path: Path
) -> None:
    from eoforge.orchestration.flows.embeddings import embed_clusters_flow, embed_similarity_flow

    res = embed_clusters_flow(str(small_field), out=str(tmp_path / "k"), clusters=4)
    assert sorted(res["maps"]) == ["33TWL", "33TWM"]
    prov = json.loads((tmp_path / "k" / "provenance.json").read_text())
    assert prov["eoforge_run"] == "embed-clusters" and prov["outputs"]
    centres = json.loads((tmp_path / "k" / "clusters" / "centres.json").read_text())
    assert len(centres["centres"]) == 4 and len(centres["centres"][0]) == 8

    from pyproj import Transformer

    grid = open_field_tile(small_field, "33TWL").grid
    x0, y0, x1, y1 = grid.bounds
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform((x0 + x1) / 2, (y0 + y1) / 2)
    sim = embed_similarity_flow(str(small_field), lon, lat, out=str(tmp_path / "s"))
    assert sim["query_tile"] == "33TWL"
    with rasterio.open(
        tmp_path / "s" / "similarity" / f"similarity-{sim['query_tile']}.tif"
    ) as src:
        assert src.dtypes[0] == "float32"
    item = json.loads(
        (tmp_path / "s" / "similarity" / f"similarity-{sim['query_tile']}.json").read_text()
    )
    assert item["properties"]["eoforge:query"] == pytest.approx([lon, lat])
