"""A large synthetic STAC catalog for scale tests: the bundled sample's items under many ids.

Every synthetic item is a copy of a real source item (same COG assets, as absolute ``file://``
URIs) with a new id, a footprint shifted onto a lon/lat grid of cells and a datetime shifted by
whole days, so searches by area and time select real subsets. The pixels stay those of the source
item (``proj:*`` metadata is unchanged), so every item loads with odc-stac like the original.

The output is what ``rustac serve`` loads fastest: ``collection.json`` plus one newline-delimited
JSON file of items (20,000 items load in ~6 s; stac-geoparquet took twice as long).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eoforge.errors import InputError
from eoforge.io.atomic import staged_file
from eoforge.stac.server import prepare_served_catalog

__all__ = [
    "SyntheticCatalog",
    "synthetic_items",
    "write_synthetic_catalog",
]

#: Property that names the real item a synthetic one copies.
SOURCE_PROPERTY = "eoforge:synthetic_of"

_DATETIME_KEYS = ("datetime", "created", "updated", "start_datetime", "end_datetime")


@dataclass(frozen=True)
class SyntheticCatalog:
    """What :func:`write_synthetic_catalog` wrote."""

    collection: Path
    """``collection.json`` (no item links), first argument of ``rustac serve``."""
    items: Path
    """``items.ndjson``, one item per line."""
    n_items: int
    """Number of items written."""
    bbox: tuple[float, float, float, float]
    """lon/lat extent of every footprint."""
    interval: tuple[str, str]
    """First and last item datetime (RFC 3339)."""

    @property
    def files(self) -> list[Path]:
        """The files to pass to :class:`eoforge.stac.search.LocalStacServer`."""
        return [self.collection, self.items]


def _shift_coords(coords: Any, dx: float, dy: float) -> Any:
    if coords and isinstance(coords[0], int | float):
        return [coords[0] + dx, coords[1] + dy, *coords[2:]]
    return [_shift_coords(c, dx, dy) for c in coords]


def _shift_time(value: str, days: int) -> str:
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00")) + dt.timedelta(days=days)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def synthetic_items(
    sources: Sequence[dict[str, Any]],
    n: int,
    *,
    grid_columns: int = 10,
    grid_rows: int = 10,
    cell_degrees: float = 1.0,
    id_prefix: str = "syn",
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` synthetic items derived from ``sources``, deterministically.

    Item ``k`` copies ``sources[k % len(sources)]``. Its replica number ``r = k // len(sources)``
    places it in grid cell ``r % (grid_columns * grid_rows)`` (footprint and bbox moved east by
    ``column * cell_degrees`` and north by ``row * cell_degrees``) and shifts its datetimes by
    ``r // (grid_columns * grid_rows)`` days, so ids, footprints and times are unique per
    (source, replica). Assets are shared with the source item (never mutated).

    Args:
        sources: real STAC items as dicts (asset hrefs should be absolute URIs).
        n: number of items to yield (>= 0).
        grid_columns: cells west to east.
        grid_rows: cells south to north.
        cell_degrees: cell size in degrees.
        id_prefix: prefix of the new ids (``<prefix>-<k:07d>-<source id>``).

    Raises:
        InputError: no sources, a negative ``n``, or an empty grid.
    """
    if not sources:
        raise InputError("synthetic catalog: no source items given; pass at least one STAC item.")
    if n < 0 or grid_columns < 1 or grid_rows < 1:
        raise InputError(
            f"synthetic catalog: n={n}, grid {grid_columns}x{grid_rows} are invalid; "
            "n must be >= 0 and the grid at least 1x1."
        )
    cells = grid_columns * grid_rows
    for k in range(n):
        src = sources[k % len(sources)]
        replica = k // len(sources)
        cell, days = replica % cells, replica // cells
        dx = (cell % grid_columns) * cell_degrees
        dy = (cell // grid_columns) * cell_degrees
        props = dict(src["properties"])
        for key in _DATETIME_KEYS:
            if isinstance(props.get(key), str):
                props[key] = _shift_time(props[key], days)
        props[SOURCE_PROPERTY] = src["id"]
        item = {**src, "id": f"{id_prefix}-{k:07d}-{src['id']}", "properties": props}
        if src.get("geometry"):
            geom = src["geometry"]
            item["geometry"] = {**geom, "coordinates": _shift_coords(geom["coordinates"], dx, dy)}
        if src.get("bbox"):
            w, s, e, nn = src["bbox"][:4]
            item["bbox"] = [w + dx, s + dy, e + dx, nn + dy]
        yield item


def _bbox_of(item: dict[str, Any]) -> tuple[float, float, float, float]:
    if item.get("bbox"):
        w, s, e, n = item["bbox"][:4]
        return float(w), float(s), float(e), float(n)
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], int | float):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        else:
            for sub in c:
                walk(sub)

    walk(item["geometry"]["coordinates"])
    return min(xs), min(ys), max(xs), max(ys)


def write_synthetic_catalog(
    source_catalog: Path,
    n: int,
    out_dir: Path,
    *,
    grid_columns: int = 10,
    grid_rows: int = 10,
    cell_degrees: float = 1.0,
    id_prefix: str = "syn",
) -> SyntheticCatalog:
    """Write ``n`` synthetic items of a static catalog as ``collection.json`` + ``items.ndjson``.

    The source catalog goes through :func:`eoforge.stac.search.prepare_served_catalog` first (absolute
    ``file://`` asset hrefs, no item links). The collection's extent is widened to cover every
    synthetic footprint and datetime. Files are written atomically.

    Args:
        source_catalog: a static catalog folder (``collection.json`` + item folders), e.g.
            :data:`eoforge.config.BUNDLED_CATALOG`.
        n: number of items (>= 1).
        out_dir: folder for the output (created).
        grid_columns: see :func:`synthetic_items`.
        grid_rows: see :func:`synthetic_items`.
        cell_degrees: see :func:`synthetic_items`.
        id_prefix: see :func:`synthetic_items`.

    Returns:
        Paths and extent of what was written.

    Raises:
        InputError: the source catalog is not usable, or ``n`` < 1.
    """
    if n < 1:
        raise InputError(f"synthetic catalog: n={n}; ask for at least one item.")
    out_dir = Path(out_dir)
    prepared = prepare_served_catalog(Path(source_catalog), out_dir / "source")
    collection = json.loads(prepared[0].read_text())
    sources = [json.loads(p.read_text()) for p in prepared[1:]]
    west = south = float("inf")
    east = north = float("-inf")
    first = last = ""
    items_path = out_dir / "items.ndjson"
    count = 0
    with staged_file(items_path) as tmp, open(tmp, "w") as f:
        for item in synthetic_items(
            sources,
            n,
            grid_columns=grid_columns,
            grid_rows=grid_rows,
            cell_degrees=cell_degrees,
            id_prefix=id_prefix,
        ):
            w, s, e, nn = _bbox_of(item)
            west, south, east, north = min(west, w), min(south, s), max(east, e), max(north, nn)
            when = str(item["properties"]["datetime"])
            first = when if not first or when < first else first
            last = max(last, when)
            f.write(json.dumps(item, separators=(",", ":")))
            f.write("\n")
            count += 1
    bbox = (west, south, east, north)
    collection["extent"] = {
        "spatial": {"bbox": [list(bbox)]},
        "temporal": {"interval": [[first, last]]},
    }
    coll_path = out_dir / "collection.json"
    with staged_file(coll_path) as tmp:
        tmp.write_text(json.dumps(collection))
    return SyntheticCatalog(
        collection=coll_path, items=items_path, n_items=count, bbox=bbox, interval=(first, last)
    )
