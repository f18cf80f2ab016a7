"""The scenes of a finished run as the labelling tools see them: each prediction item with its
class map, uncertainty map and source scene (for true colour)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from eoforge.cube.sources import local_path
from eoforge.errors import InputError

__all__ = ["RunScene", "asset_href", "run_scenes"]


@dataclass(frozen=True)
class RunScene:
    """One predicted scene of a run folder."""

    item_id: str
    """Id of the source scene (the prediction item is ``<item_id>-prediction``)."""
    prediction: Path
    """The class-map COG."""
    uncertainty: Path
    """The uncertainty COG (bands entropy, margin; see :mod:`eoforge.inference.uncertainty`)."""
    classes: tuple[str, ...]
    """Class names, index = class value."""
    source: dict[str, Any] | None
    """The source scene's STAC item from the run's ``items.json`` (None when absent)."""


def _asset_path(item_json: Path, item: dict[str, Any], key: str) -> Path:
    asset = item.get("assets", {}).get(key)
    if not asset:
        raise InputError(
            f"prediction item '{item_json}' has no '{key}' asset; predict again with this "
            "eoforge version (it writes the uncertainty beside each class map)."
        )
    path: Path = (item_json.parent / str(asset["href"])).resolve()
    if not path.is_file():
        raise InputError(f"asset '{key}' of '{item_json}' points to '{path}', which is missing.")
    return path


def asset_href(item: dict[str, Any], key: str) -> str | None:
    """The href of asset ``key`` of a source STAC item, made absolute against its self link."""
    asset = item.get("assets", {}).get(key)
    if not asset:
        return None
    href = str(asset["href"])
    local = local_path(href)
    if local is not None and not local.is_absolute():
        for link in item.get("links", []):
            if link.get("rel") == "self" and link.get("href"):
                return urljoin(str(link["href"]), href)
    return href


def run_scenes(run_dir: Path) -> list[RunScene]:
    """Every predicted scene of ``run_dir`` (a folder written by ``eoforge run`` or ``predict``).

    Raises:
        InputError: no predictions, or prediction items without their COGs.
    """
    run = Path(run_dir)
    items = sorted((run / "predictions").glob("*.json"))
    if not items:
        raise InputError(
            f"'{run}' has no predictions/*.json; pass the --out folder of `eoforge run` or "
            "`eoforge predict`."
        )
    sources: dict[str, dict[str, Any]] = {}
    if (run / "items.json").is_file():
        for feature in json.loads((run / "items.json").read_text()).get("features", []):
            sources[str(feature.get("id"))] = feature
    scenes = []
    for path in items:
        item = json.loads(path.read_text())
        classes = item["assets"]["classification"].get("classification:classes", [])
        names = tuple(
            c["name"] for c in sorted(classes, key=lambda c: c["value"]) if not c.get("nodata")
        )
        item_id = str(item["id"]).removesuffix("-prediction")
        scenes.append(
            RunScene(
                item_id=item_id,
                prediction=_asset_path(path, item, "classification"),
                uncertainty=_asset_path(path, item, "uncertainty"),
                classes=names,
                source=sources.get(item_id),
            )
        )
    return scenes
