"""Which asset hrefs of a cube's items are local files, and how GDAL must be given them.

A local file that reads wrong is bad input, not a passing failure (:func:`local_sources`), and
GDAL opens a ``file://`` URI without percent-decoding it (:func:`decoded_local_hrefs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["decoded_local_hrefs", "local_sources"]


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


def local_sources(hrefs: dict[str, dict[str, str]], ids: str, variable: str) -> list[Path]:
    """The local files one (variable, slice) is read from; empty unless every source is local."""
    paths: list[Path] = []
    for item_id in ids.split("+"):
        href = hrefs.get(item_id, {}).get(variable)
        parts = urlsplit(href or "")
        if href is None or parts.scheme not in ("", "file"):
            return []
        paths.append(Path(unquote(parts.path) if parts.scheme else href))
    return paths
