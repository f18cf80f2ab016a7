"""What each slice of a cube is made of: its STAC items and whether their files are local.

Slices are named by their items the way odc-stac groups them, by solar day
(:func:`slice_item_ids`); a local file that reads wrong is bad input, not a passing failure
(:func:`local_sources`); GDAL opens a ``file://`` URI without percent-decoding it
(:func:`decoded_local_hrefs`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["decoded_local_hrefs", "local_path", "local_sources", "slice_item_ids", "solar_day"]


def decoded_local_hrefs(item: dict[str, Any]) -> dict[str, Any]:
    """The item with ``file://`` asset hrefs percent-decoded: GDAL opens a ``file://`` URI
    without percent-decoding it, so ``cat%20space/B02.tif`` was not found."""
    assets = {}
    for key, asset in item.get("assets", {}).items():
        parts = urlsplit(str(asset.get("href", "")))
        if parts.scheme == "file" and parts.netloc in ("", "localhost"):
            asset = {**asset, "href": f"file://{unquote(parts.path)}"}
        assets[key] = asset
    return {**item, "assets": assets}


def local_path(href: str) -> Path | None:
    """The local file an asset href names (a plain path or a percent-encoded ``file://`` URI),
    or None for a remote one."""
    parts = urlsplit(href)
    if parts.scheme not in ("", "file"):
        return None
    return Path(unquote(parts.path) if parts.scheme else href)


def local_sources(hrefs: dict[str, dict[str, str]], ids: str, variable: str) -> list[Path]:
    """The local files one (variable, slice) is read from; empty unless every source is local."""
    paths: list[Path] = []
    for item_id in ids.split("+"):
        href = hrefs.get(item_id, {}).get(variable)
        path = None if href is None else local_path(href)
        if path is None:
            return []
        paths.append(path)
    return paths


def solar_day(utc: datetime, lon: float) -> date:
    """The solar day of a UTC time at a longitude, as odc-stac's ``groupby="solar_day"`` computes
    it: the UTC time shifted by whole hours, ``int(lon / 15)``."""
    return (utc + timedelta(hours=int(lon / 15))).date()


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def slice_item_ids(
    items: Sequence[dict[str, Any]], times: Iterable[Any], mid_lon: float
) -> list[str]:
    """The ids of the items in each time slice (``+``-joined), grouped as odc-stac grouped them.

    odc-stac groups a tile's items by solar day at the middle longitude of the load and stamps
    each slice with its first item's UTC time; near 180° two items of one UTC date can fall on
    different solar days (and one solar day span two UTC dates), so grouping by UTC date named
    both slices "A+B".

    Args:
        items: the tile's STAC items.
        times: the slices' time stamps (UTC, numpy ``datetime64`` or ISO strings).
        mid_lon: the longitude odc-stac used (the centroid of the load's extent).
    """
    by_day: dict[date, list[str]] = defaultdict(list)
    for it in items:
        props = it["properties"]
        stamp = props.get("datetime") or props.get("start_datetime")
        by_day[solar_day(_utc(str(stamp)), mid_lon)].append(str(it["id"]))
    names = []
    for t in times:
        text = str(t)[:26]  # numpy datetime64[ns] prints 9 fractional digits; isoformat takes 6
        names.append("+".join(by_day[solar_day(_utc(text), mid_lon)]))
    return names
