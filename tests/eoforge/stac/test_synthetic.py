"""Tests of eoforge.stac.synthetic: many synthetic items, served by a real rustac API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eoforge.config import StacSpec
from eoforge.cube.build import load_tile
from eoforge.errors import InputError
from eoforge.stac.search import search_items
from eoforge.stac.server import LocalStacServer, prepare_served_catalog
from eoforge.stac.synthetic import (
    SOURCE_PROPERTY,
    synthetic_items,
    write_synthetic_catalog,
)


@pytest.fixture(scope="module")
def sources(
    bundled_catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    files = prepare_served_catalog(bundled_catalog, tmp_path_factory.mktemp("src"))
    return [json.loads(p.read_text()) for p in files[1:]]


def test_items_are_unique_shifted_copies(sources: list[dict[str, Any]]) -> None:
    items = list(synthetic_items(sources, 45, grid_columns=2, grid_rows=2, cell_degrees=1.5))
    assert len(items) == 45
    assert len({it["id"] for it in items}) == 45
    first, moved = items[0], items[10]  # same source, replica 1 -> cell 1 (one column east)
    assert first["properties"][SOURCE_PROPERTY] == moved["properties"][SOURCE_PROPERTY]
    assert moved["bbox"][0] == pytest.approx(first["bbox"][0] + 1.5)
    assert moved["bbox"][1] == pytest.approx(first["bbox"][1])
    assert moved["properties"]["datetime"] == first["properties"]["datetime"]
    later = items[40]  # replica 4 -> grid of 4 cells full -> back to cell 0, one day later
    assert later["bbox"] == first["bbox"]
    assert later["properties"]["datetime"].startswith("2023-08-16")
    assert first["properties"]["datetime"].startswith("2023-08-15")
    assert later["assets"] is first["assets"]  # pixels shared, never copied
    src = sources[0]
    assert src["id"] == first["properties"][SOURCE_PROPERTY]
    assert "eoforge:synthetic_of" not in src["properties"]  # sources untouched


def test_items_are_deterministic(sources: list[dict[str, Any]]) -> None:
    a = [json.dumps(it, sort_keys=True) for it in synthetic_items(sources, 23)]
    b = [json.dumps(it, sort_keys=True) for it in synthetic_items(sources, 23)]
    assert a == b


@pytest.mark.parametrize(
    ("n", "kwargs", "match"),
    [(-1, {}, "n=-1"), (3, {"grid_rows": 0}, "grid")],
)
def test_bad_arguments_are_input_errors(
    sources: list[dict[str, Any]], n: int, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(InputError, match=match):
        list(synthetic_items(sources, n, **kwargs))
    with pytest.raises(InputError, match="no source items"):
        list(synthetic_items([], 1))


def test_written_catalog_is_served_searched_and_loads(
    bundled_catalog: Path, sources: list[dict[str, Any]], tmp_path: Path
) -> None:
    cat = write_synthetic_catalog(bundled_catalog, 250, tmp_path, grid_columns=5, grid_rows=5)
    assert cat.n_items == 250
    assert len(cat.items.read_text().splitlines()) == 250
    coll = json.loads(cat.collection.read_text())
    assert not [lk for lk in coll["links"] if lk["rel"] == "item"]
    assert coll["extent"]["spatial"]["bbox"] == [list(cat.bbox)]
    assert cat.bbox[2] - cat.bbox[0] > 4  # five 1-degree columns
    with LocalStacServer(cat.files) as server:
        everything = search_items(StacSpec(datetime=None, max_items=1000), server.url)
        assert len(everything) == 250
        # the first replica (cell 0) holds one copy of each of the 10 sources
        w, s, e, n = sources[0]["bbox"]
        x, y = (w + e) / 2, (s + n) / 2
        cell0 = search_items(
            StacSpec(datetime=None, bbox=(x - 0.05, y - 0.05, x + 0.05, y + 0.05)), server.url
        )
        assert {it["properties"][SOURCE_PROPERTY] for it in cell0} == {
            it["id"] for it in sources if it["properties"]["grid:code"] == "MGRS-33TWL"
        }
    by_id = {it["id"]: it for it in sources}
    syn = everything[0]
    src = by_id[syn["properties"][SOURCE_PROPERTY]]
    bands = ["blue", "scl"]
    got = load_tile([syn], bands).compute()
    want = load_tile([src], bands).compute()
    for b in bands:
        np.testing.assert_array_equal(got[b].values, want[b].values)


def test_write_rejects_zero_items(bundled_catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one"):
        write_synthetic_catalog(bundled_catalog, 0, tmp_path)
