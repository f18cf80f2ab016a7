"""Watch a STAC collection and emit one Prefect event per landed item (deployment on a short schedule)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.events import emit_event
from prefect.variables import Variable

from eoforge.config import RunSpec, default_store
from eoforge.io.atomic import write_json_atomic
from eoforge.runs.stages_data import stac_endpoint
from eoforge.stac.watch import EVENT_NAME, Cursor, items_since


def _cursor_path(store: str, collection: str) -> Path:
    return Path(store) / "cursors" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', collection)}.json"


@task(name="find-landed-items", retries=3, retry_delay_seconds=[2, 5, 10], retry_jitter_factor=0.5)
def find_landed(
    spec: RunSpec, api_url: str, cursor: dict[str, Any], emit_existing: bool
) -> dict[str, Any]:
    landed, new_cursor = items_since(
        spec.stac,
        api_url,
        Cursor.from_dict(cursor, spec.stac.collection),
        emit_existing=emit_existing,
    )
    return {"landed": [li.__dict__ for li in landed], "cursor": new_cursor.to_dict()}


@flow(name="eoforge-watch", log_prints=True)
def watch_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    store: str | None = None,
    api_url: str | None = None,
    emit_existing: bool = False,
) -> dict[str, Any]:
    """Emit `eoforge.stac.item.landed` for each item new (or re-published) since the cursor.

    The cursor lives in the store (``cursors/<collection>.json``, survives restarts); its
    watermark is mirrored in the Prefect Variable ``eoforge-watermark-<collection>``. Events are
    emitted before the cursor advances (at least once) with deterministic ids, and inference is
    idempotent, so a crash between the two cannot lose an item or corrupt a prediction.
    """
    from eoforge.stac.watch import LandedItem

    store_s = str(Path(store or default_store()).resolve())
    path = _cursor_path(store_s, spec.stac.collection)
    cursor = json.loads(path.read_text()) if path.is_file() else None
    with stac_endpoint(spec, api_url) as url:
        found = find_landed(spec, url, cursor or {}, emit_existing)
    emitted = []
    for raw in found["landed"]:
        li = LandedItem(**raw)
        emit_event(
            event=EVENT_NAME,
            resource={
                "prefect.resource.id": li.resource_id(),
                "prefect.resource.name": li.item_id,
                "eoforge.collection": li.collection,
            },
            payload=li.payload(),
            id=li.event_id(),
        )
        emitted.append(
            {"item_id": li.item_id, "updated": li.updated, "event_id": str(li.event_id())}
        )
    write_json_atomic(path, found["cursor"])
    slug = re.sub(r"[^a-z0-9_-]", "-", spec.stac.collection.lower())
    Variable.set(f"eoforge-watermark-{slug}", found["cursor"]["watermark"] or "", overwrite=True)
    print(f"{len(emitted)} landed item(s): {[e['item_id'] for e in emitted]}")
    return {"emitted": emitted, "watermark": found["cursor"]["watermark"]}
