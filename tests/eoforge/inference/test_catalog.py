"""The run folder's catalog.json: every prediction item, relative links, readable by pystac."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest

from eoforge.errors import InputError
from eoforge.inference.catalog import write_predictions_catalog


def _item(item_id: str) -> dict[str, object]:
    return pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [16.0, 45.5]},
        bbox=[16.0, 45.5, 16.0, 45.5],
        datetime=pystac.utils.str_to_datetime("2023-08-15T10:00:00Z"),
        properties={},
    ).to_dict(include_self_link=False)


def test_catalog_links_every_prediction_item(tmp_path: Path) -> None:
    (tmp_path / "predictions").mkdir()
    for name in ("b", "a"):
        (tmp_path / "predictions" / f"{name}.json").write_text(json.dumps(_item(f"{name}-p")))
    out = write_predictions_catalog(tmp_path)
    catalog = pystac.Catalog.from_file(str(out))
    assert [i.id for i in catalog.get_items()] == ["a-p", "b-p"]
    assert all(not lk["href"].startswith("/") for lk in json.loads(out.read_text())["links"])
    with pytest.raises(InputError, match="no predictions"):
        write_predictions_catalog(tmp_path / "empty")
