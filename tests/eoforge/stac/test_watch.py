from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import StacSpec
from eoforge.stac.server import LocalStacServer, prepare_served_catalog
from eoforge.stac.watch import Cursor, event_id, items_since

FIRST_DATES = ("2023-08-10", "2023-08-13", "2023-08-15")


def _early(item: dict[str, Any]) -> bool:
    return str(item["properties"]["datetime"])[:10] in FIRST_DATES


def _serve(catalog: Path, work: Path, include: Any = None) -> LocalStacServer:
    return LocalStacServer(prepare_served_catalog(catalog, work, include))


def test_new_items_land_once_and_republished_items_land_again(
    bundled_catalog: Path, tmp_path: Path
) -> None:
    spec = StacSpec()
    with _serve(bundled_catalog, tmp_path / "a", _early) as srv:
        landed, cursor = items_since(spec, srv.url, Cursor(spec.collection))
    assert landed == [] and len(cursor.seen) == 6  # a fresh watcher starts from now
    cursor = Cursor.from_dict(
        json.loads(json.dumps(cursor.to_dict())), spec.collection
    )  # survives a restart

    with _serve(bundled_catalog, tmp_path / "b") as srv:
        landed, cursor = items_since(spec, srv.url, cursor)
        assert sorted(li.item_id for li in landed) == [
            "S2A_33TWL_20230818_0_L2A",
            "S2A_33TWM_20230818_0_L2A",
            "S2B_33TWL_20230820_0_L2A",
            "S2B_33TWM_20230820_0_L2A",
        ]
        assert all(li.href and li.item_id in li.href for li in landed)
        again, cursor = items_since(spec, srv.url, cursor)
        assert again == []

    # re-publish one item with a newer `updated`: it lands again, once
    work = tmp_path / "c"
    files = prepare_served_catalog(bundled_catalog, work)
    target = next(f for f in files if f.name == "S2B_33TWM_20230810_0_L2A.json")
    item = json.loads(target.read_text())
    item["properties"]["updated"] = "2023-09-01T00:00:00Z"
    target.write_text(json.dumps(item))
    with LocalStacServer(files) as srv:
        landed, cursor = items_since(spec, srv.url, cursor)
        assert [(li.item_id, li.updated) for li in landed] == [
            ("S2B_33TWM_20230810_0_L2A", "2023-09-01T00:00:00Z")
        ]
        assert items_since(spec, srv.url, cursor)[0] == []


def test_emit_existing_and_event_ids(stac_api: str) -> None:
    spec = StacSpec()
    landed, _ = items_since(spec, stac_api, Cursor(spec.collection), emit_existing=True)
    assert len(landed) == 10
    assert landed[0].event_id() == event_id(spec.collection, landed[0].item_id, landed[0].updated)
    assert len({li.event_id() for li in landed}) == 10
    assert landed[0].resource_id().startswith("stac.item.sentinel-2-l2a.")


@pytest.mark.parametrize("days", [1, 400])
def test_retention_prunes_old_entries(stac_api: str, days: int) -> None:
    from datetime import timedelta

    spec = StacSpec()
    _, cursor = items_since(spec, stac_api, Cursor(spec.collection), retention=timedelta(days=days))
    assert (len(cursor.seen) < 10) if days == 1 else (len(cursor.seen) == 10)
