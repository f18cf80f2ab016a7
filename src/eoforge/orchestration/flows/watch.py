"""Watch a STAC collection and emit one Prefect event per landed item (deployment on a schedule).

A watch run polls the API every ``poll_seconds`` for ``run_seconds`` (one poll when either is
0), so a landed item is noticed within a poll instead of within a run start-up: starting a run
(schedule, worker poll, a new Python process, imports) takes 5-10 s on a loaded 2-core machine,
a poll 0.1 s. The deployment starts one such run a minute and lets only one run at a time.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.events import emit_event
from prefect.variables import Variable

from eoforge.config import RunSpec, default_store
from eoforge.errors import TransientError
from eoforge.io.atomic import write_json_atomic
from eoforge.runs.stages_data import stac_endpoint
from eoforge.stac.watch import EVENT_NAME, Cursor, LandedItem, items_since

#: Per-request timeout of a poll in a polling run (the spec's when shorter).
POLL_TIMEOUT_S = 10.0


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


def _poll(spec: RunSpec, url: str, path: Path, emit_existing: bool, retry: bool) -> dict[str, Any]:
    """One look at the API: emit an event per landed item, then advance the cursor."""
    cursor = json.loads(path.read_text()) if path.is_file() else None
    find = find_landed if retry else find_landed.with_options(retries=0)
    found = find(spec, url, cursor or {}, emit_existing)
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
    if cursor is None or found["cursor"] != cursor:
        write_json_atomic(path, found["cursor"])
    if emitted or cursor is None or found["cursor"]["watermark"] != cursor.get("watermark"):
        slug = re.sub(r"[^a-z0-9_-]", "-", spec.stac.collection.lower())
        Variable.set(
            f"eoforge-watermark-{slug}", found["cursor"]["watermark"] or "", overwrite=True
        )
    if emitted:
        print(f"{len(emitted)} landed item(s): {[e['item_id'] for e in emitted]}")
    return {"emitted": emitted, "watermark": found["cursor"]["watermark"]}


@flow(name="eoforge-watch", log_prints=True)
def watch_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    store: str | None = None,
    api_url: str | None = None,
    emit_existing: bool = False,
    poll_seconds: float = 0,
    run_seconds: float = 0,
) -> dict[str, Any]:
    """Emit `eoforge.stac.item.landed` for each item new (or re-published) since the cursor.

    The cursor lives in the store (``cursors/<collection>.json``, survives restarts); its
    watermark is mirrored in the Prefect Variable ``eoforge-watermark-<collection>``. Events are
    emitted before the cursor advances (at least once) with deterministic ids, and inference is
    idempotent, so a crash between the two cannot lose an item or corrupt a prediction.

    Args:
        spec: the run spec (its ``stac`` section says what to watch).
        store: the store holding the cursor (default: ``$EOFORGE_STORE``).
        api_url: the STAC API (default: the spec's, or the bundled sample served locally).
        emit_existing: a new cursor emits the items already there too.
        poll_seconds: look again after this many seconds ...
        run_seconds: ... until this many seconds have passed (0: look once). Keep it shorter
            than the schedule's interval minus the worker's prefetch, so the next scheduled
            run finds this one finished.
    """
    store_s = str(Path(store or default_store()).resolve())
    path = _cursor_path(store_s, spec.stac.collection)
    looping = poll_seconds > 0 and run_seconds > 0
    if looping:
        # an unreachable or hanging API costs one poll, not a minute of backoff and timeouts:
        # the next poll is the retry
        stac = spec.stac.model_copy(
            update={"max_retries": 1, "timeout_s": min(spec.stac.timeout_s, POLL_TIMEOUT_S)}
        )
        spec = spec.model_copy(update={"stac": stac})
    emitted: list[dict[str, Any]] = []
    polls, failed = 0, 0
    result: dict[str, Any] | None = None
    error: TransientError | None = None
    end = time.monotonic() + max(run_seconds, 0)
    with stac_endpoint(spec, api_url) as url:
        while True:
            started = time.monotonic()
            polls += 1
            try:
                result = _poll(spec, url, path, emit_existing, retry=not looping)
                emitted += result["emitted"]
            except TransientError as exc:
                if not looping:
                    raise
                failed, error = failed + 1, exc
                print(f"poll {polls} failed, trying again in {poll_seconds:g} s: {exc}")
            if not looping or started + poll_seconds >= end:
                break
            time.sleep(max(started + poll_seconds - time.monotonic(), 0))
    if result is None and error is not None:
        raise error  # not one poll reached the API
    assert result is not None
    print(f"{polls} poll(s) ({failed} failed), {len(emitted)} landed item(s)")
    return {"emitted": emitted, "watermark": result["watermark"], "polls": polls}
