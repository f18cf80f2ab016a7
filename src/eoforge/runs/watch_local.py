"""The event loop of the deployed ``watch`` -> ``infer`` deployments, run locally without Prefect:
poll the STAC search, and predict each landed (new or re-published) item with the production
model. The cursor is kept in the store (``cursors/<collection>.local.json``, apart from the
deployed watcher's), written after the item's predictions, so a crash re-predicts rather than
skips; predictions are deterministic, so re-predicting converges.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eoforge.config import RunSpec
from eoforge.io.atomic import write_json_atomic
from eoforge.runs.progress import stage
from eoforge.runs.stages_data import stac_endpoint, stage_ingest, stage_search
from eoforge.runs.stages_model import stage_infer
from eoforge.runs.store import production_model

__all__ = ["cursor_path", "watch_loop", "watch_once"]


def cursor_path(store: Path, collection: str) -> Path:
    """Where the local watcher keeps its cursor for ``collection``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)
    return Path(store) / "cursors" / f"{slug}.local.json"


def watch_once(
    spec: RunSpec,
    out: Path,
    store: Path,
    api_url: str | None = None,
    emit_existing: bool = False,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Poll once: find the items landed since the cursor and predict them into ``out``.

    Returns:
        ``{"landed": [item ids], "predictions": {item id: {...}}, "watermark": ...}``.

    Raises:
        InputError: no production model in the store and no ``model_dir``.
    """
    from eoforge.stac.watch import Cursor, items_since

    store_s = str(Path(store).resolve())
    model = str(model_dir) if model_dir is not None else production_model(store_s)
    path = cursor_path(Path(store_s), spec.stac.collection)
    raw = json.loads(path.read_text()) if path.is_file() else {}
    cursor = Cursor.from_dict(raw, spec.stac.collection)
    predictions: dict[str, Any] = {}
    with stac_endpoint(spec, api_url) as url:
        with stage("watch"):
            landed, new_cursor = items_since(spec.stac, url, cursor, emit_existing=emit_existing)
        ids = [li.item_id for li in landed]
        if ids:
            out_s = str(Path(out).resolve())
            work = Path(out_s) / ".work" / uuid.uuid4().hex
            work.mkdir(parents=True, exist_ok=True)
            try:
                with stage("search"):
                    s = stage_search(spec, url, work, ids)
                key = s["keys"]["cube"]
                with stage("ingest"):
                    c = stage_ingest(spec, s["items_uri"], store_s, key)
                with stage("infer"):
                    r = stage_infer(
                        spec, model, c["cube_uri"], s["items_uri"], out_s, ids, copy_model=False
                    )
                predictions = r["predictions"]
            finally:
                shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(path, new_cursor.to_dict())
    return {"landed": ids, "predictions": predictions, "watermark": new_cursor.watermark}


def watch_loop(
    spec: RunSpec,
    out: Path,
    store: Path,
    api_url: str | None = None,
    interval_s: float = 60.0,
    polls: int | None = None,
    emit_existing: bool = False,
    model_dir: Path | None = None,
    on_poll: Callable[[int, list[str], float], None] | None = None,
) -> int:
    """Poll every ``interval_s`` seconds, ``polls`` times (None: until interrupted).

    Returns:
        The number of items predicted.
    """
    from eoforge.runs.pipeline import refuse_url

    refuse_url(out, "--out")
    done, poll = 0, 0
    try:
        while polls is None or poll < polls:
            poll += 1
            t0 = time.perf_counter()
            found = watch_once(spec, out, store, api_url, emit_existing, model_dir)
            done += len(found["predictions"])
            if on_poll is not None:
                on_poll(poll, found["landed"], time.perf_counter() - t0)
            if polls is None or poll < polls:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return done
