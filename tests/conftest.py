"""Shared fixtures: the bundled real sample served by a real rustac STAC API on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import BUNDLED_CATALOG, RunSpec, StacSpec
from eoforge.stac import LocalStacServer, prepare_served_catalog, search_items


@pytest.fixture(scope="session")
def bundled_catalog() -> Path:
    assert (BUNDLED_CATALOG / "collection.json").is_file(), "bundled sample missing"
    return BUNDLED_CATALOG


@pytest.fixture(scope="session")
def stac_api(bundled_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ``rustac serve`` over the bundled mini sample."""
    files = prepare_served_catalog(bundled_catalog, tmp_path_factory.mktemp("served"))
    with LocalStacServer(files) as server:
        yield server.url


@pytest.fixture(scope="session")
def real_items(stac_api: str) -> list[dict[str, Any]]:
    return search_items(StacSpec(), stac_api)


@pytest.fixture(scope="session")
def real_cube(real_items: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eoforge.cube import write_cube

    spec = RunSpec()
    out = tmp_path_factory.mktemp("cube") / "cube.zarr"
    write_cube(real_items, [*spec.stac.bands, spec.stac.label_asset], out)
    return out
