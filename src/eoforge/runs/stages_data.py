"""Data stages: STAC search, ingest into the stored cube, chips cut from it.

Each stage checks its data contract; cube and chips are reused from the store when their cache
key (:mod:`eoforge.runs.store`) already exists.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eoforge.config import RunSpec
from eoforge.errors import InputError
from eoforge.runs.store import ITEMS_FILE, plan_keys, stored

__all__ = [
    "stac_endpoint",
    "stage_chips",
    "stage_ingest",
    "stage_search",
]


def _split_counts(chips: Path) -> dict[str, int]:
    import zarr

    g = zarr.open_group(str(chips), mode="r")
    counts: dict[str, int] = {}
    for name in ("train", "val", "test"):
        if f"{name}/y" in g:
            arr = g[f"{name}/y"]
            assert isinstance(arr, zarr.Array)
            counts[name] = int(arr.shape[0])
    return counts


def _load_items(items_uri: Path) -> list[dict[str, Any]]:
    data = json.loads(Path(items_uri).read_text())
    return list(data["features"])


@contextlib.contextmanager
def stac_endpoint(spec: RunSpec, api_url: str | None = None) -> Iterator[str]:
    """The STAC API to search: ``api_url``, else ``spec.stac.api_url``, else a local rustac
    server over ``spec.stac.catalog_dir`` (stopped on exit)."""
    from eoforge.stac.server import served_catalog

    url = api_url or spec.stac.api_url
    if url:
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="eoforge-stac-") as td,
        served_catalog(spec.stac.catalog_dir, Path(td), log_path=Path(td) / "rustac.log") as api,
    ):
        yield api.url


def stage_search(
    spec: RunSpec, api_url: str, run_dir: Path, ids: Sequence[str] | None = None
) -> dict[str, Any]:
    """Search the STAC API (optionally only ``ids``), check the items contract, save
    ``items.json`` and plan the cache keys."""
    from eoforge.contracts import tables
    from eoforge.contracts.validation import enforce
    from eoforge.io.atomic import write_json_atomic
    from eoforge.labels.sources import label_file_records
    from eoforge.stac.search import search_items

    items = search_items(spec.stac, api_url, ids)
    result = enforce("items", tables.items_table(items, [*spec.stac.bands, spec.stac.label_asset]))
    items_uri = Path(run_dir) / ITEMS_FILE
    write_json_atomic(items_uri, {"type": "FeatureCollection", "features": items})
    return {
        "items_uri": str(items_uri),
        "item_ids": [it["id"] for it in items],
        "keys": plan_keys(spec, items),
        "label_files": label_file_records(spec.labels),
        "contract": result.to_dict(),
    }


def stage_ingest(spec: RunSpec, items_uri: str, store: str, key: str) -> dict[str, Any]:
    """Load the items into the stored cube ``key`` (unless it exists) and check the cube contract."""
    from eoforge.contracts import tables
    from eoforge.contracts.validation import enforce
    from eoforge.cube.build import list_tiles, verify_cube, write_cube
    from eoforge.stac.aoi import aoi_geometry
    from eoforge.stac.signing import sign_items

    cube = stored(store, "cube", key)
    reused = cube.exists()
    if reused:
        try:
            verify_cube(cube)
        except InputError:
            reused = False  # torn or modified: rebuilt below (replaced atomically)
    if not reused:
        write_cube(
            sign_items(_load_items(Path(items_uri)), spec.stac.sign, spec.stac.timeout_s),
            [*spec.stac.bands, spec.stac.label_asset],
            cube,
            spec.cube,
            aoi_geometry(spec.stac),
            label_variables=(spec.stac.label_asset,),
            s3=spec.stac.s3,
        )
    result = enforce("cube", tables.cube_table(cube, label_variables=(spec.stac.label_asset,)))
    return {
        "cube_uri": str(cube),
        "tiles": list_tiles(cube),
        "reused": reused,
        "contract": result.to_dict(),
    }


def stage_chips(spec: RunSpec, cube_uri: str, store: str, key: str) -> dict[str, Any]:
    """Cut the stored chips ``key`` from the cube (unless they exist); check the chips contract."""
    from eoforge.chips.cut import build_chips
    from eoforge.chips.index import enforce_chip_index
    from eoforge.contracts import tables
    from eoforge.contracts.validation import enforce
    from eoforge.labels.sources import label_source

    chips = stored(store, "chips", key)
    reused = chips.exists()
    info: dict[str, Any] = {}
    if not reused:
        built = build_chips(
            Path(cube_uri),
            chips,
            spec.chips,
            spec.labels,
            spec.stac.bands,
            spec.stac.label_asset,
            sampling=spec.chips.sampling,
            label_source=label_source(spec.labels, spec.stac.label_asset),
        )
        info = {
            "rejected": built.rejected,
            "class_counts": built.class_counts,
            "label_source": built.label_source,
        }
    params = {
        "max_nodata_fraction": spec.chips.max_nodata_fraction,
        "min_labelled_fraction": spec.chips.min_labelled_fraction,
    }
    result = enforce("chips", tables.chips_table(chips), parameters=params)
    index_result = enforce_chip_index(chips, parameters=params)
    return {
        "chips_uri": str(chips),
        "counts": _split_counts(chips),
        "reused": reused,
        **info,
        "contract": result.to_dict(),
        "index_contract": index_result.to_dict(),
    }
