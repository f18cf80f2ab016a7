"""The STAC catalog of a run's predictions: ``catalog.json`` at the run's root linking every
prediction item, so the run folder is a self-contained static catalog (what an OGC
Application Package's output must be, and what any STAC browser opens)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eoforge.errors import InputError
from eoforge.io.atomic import write_json_atomic

__all__ = ["CATALOG_NAME", "write_predictions_catalog"]

CATALOG_NAME = "catalog.json"


def write_predictions_catalog(
    run_dir: Path, title: str = "eoforge predictions", catalog_id: str = "eoforge-predictions"
) -> Path:
    """Write ``run_dir/catalog.json`` linking ``predictions/*.json`` (relative hrefs).

    Raises:
        InputError: ``run_dir`` has no prediction items.
    """
    run = Path(run_dir)
    items = sorted((run / "predictions").glob("*.json"))
    if not items:
        raise InputError(f"'{run}' has no predictions/*.json to catalogue; predict first.")
    catalog: dict[str, Any] = {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": catalog_id,
        "title": title,
        "description": "Per-pixel class maps and their uncertainty, one item per source scene.",
        "links": [
            {"rel": "root", "href": f"./{CATALOG_NAME}", "type": "application/json"},
            {"rel": "self", "href": f"./{CATALOG_NAME}", "type": "application/json"},
            *(
                {"rel": "item", "href": f"./predictions/{p.name}", "type": "application/geo+json"}
                for p in items
            ),
        ],
    }
    out = run / CATALOG_NAME
    write_json_atomic(out, catalog)
    return out
