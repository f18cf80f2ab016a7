"""New-item detection: which STAC items appeared (or were re-published) since a persisted cursor.

The cursor maps each item id seen to the ``updated`` time (falling back to ``datetime``) it had
when seen, plus a watermark (the newest such time). An item is *landed* when its id is new or its
``updated`` is newer than recorded, so a re-published item is an event again and no
(id, updated) pair is reported twice. Entries older than ``watermark - retention`` are pruned,
keeping the cursor small on long-running collections.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from eoforge.config import StacSpec
from eoforge.stac.items import self_href
from eoforge.stac.search import search_items

__all__ = [
    "EVENT_NAME",
    "Cursor",
    "LandedItem",
    "event_id",
    "items_since",
]

#: Name of the Prefect event emitted per landed item.
EVENT_NAME = "eoforge.stac.item.landed"
_NAMESPACE = uuid.UUID("5d1c0e7e-7f55-4b7e-9a53-6f2b4c7a1e0f")


def _stamp(item: dict[str, Any]) -> str:
    props = item.get("properties", {})
    return str(props.get("updated") or props.get("datetime") or "")


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


@dataclass
class Cursor:
    """What the watcher has already reported for one collection."""

    collection: str
    watermark: str | None = None
    seen: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"collection": self.collection, "watermark": self.watermark, "seen": dict(self.seen)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, collection: str) -> Cursor:
        if not data:
            return cls(collection=collection)
        return cls(
            collection=str(data.get("collection", collection)),
            watermark=data.get("watermark"),
            seen={str(k): str(v) for k, v in dict(data.get("seen", {})).items()},
        )


@dataclass(frozen=True)
class LandedItem:
    """One item to report: enough for an event payload without refetching."""

    collection: str
    item_id: str
    updated: str
    datetime: str | None
    href: str | None

    def event_id(self) -> uuid.UUID:
        return event_id(self.collection, self.item_id, self.updated)

    def resource_id(self) -> str:
        return f"stac.item.{self.collection}.{self.item_id}"

    def payload(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "item_id": self.item_id,
            "updated": self.updated,
            "datetime": self.datetime,
            "href": self.href,
        }


def event_id(collection: str, item_id: str, updated: str) -> uuid.UUID:
    """Deterministic event id of an (item, updated) pair: repeats are deduplicated by Prefect."""
    return uuid.uuid5(_NAMESPACE, f"{collection}/{item_id}/{updated}")


def items_since(
    spec: StacSpec,
    api_url: str,
    cursor: Cursor,
    retention: timedelta = timedelta(days=30),
    emit_existing: bool = False,
) -> tuple[list[LandedItem], Cursor]:
    """Search the configured collection/AOI/dates and return the items landed since ``cursor``.

    Args:
        spec: search parameters (collection, bbox, datetime, cloud filter).
        api_url: the STAC API.
        cursor: what was reported before.
        retention: how far behind the watermark seen entries are kept.
        emit_existing: on a fresh cursor, report every item (True) or only record them (False,
            the default: a new watcher starts from "now" instead of replaying the archive).

    Returns:
        The landed items (oldest first) and the advanced cursor (persist it after emitting).
    """
    from eoforge.errors import InputError

    try:
        items = search_items(spec, api_url)
    except InputError as exc:
        if "returned no items" in str(exc):
            items = []
        else:
            raise
    fresh = cursor.watermark is None and not cursor.seen
    landed: list[LandedItem] = []
    seen = dict(cursor.seen)
    for it in items:
        stamp = _stamp(it)
        prev = seen.get(it["id"])
        if prev is None or (stamp and _parse(stamp) > _parse(prev)):
            seen[it["id"]] = stamp
            if fresh and not emit_existing:
                continue
            landed.append(
                LandedItem(
                    collection=spec.collection,
                    item_id=str(it["id"]),
                    updated=stamp,
                    datetime=it.get("properties", {}).get("datetime"),
                    href=self_href(it),
                )
            )
    stamps = [s for s in seen.values() if s]
    watermark = max(stamps, key=_parse) if stamps else cursor.watermark
    if watermark:
        floor = _parse(watermark) - retention
        seen = {k: v for k, v in seen.items() if not v or _parse(v) >= floor}
    landed.sort(key=lambda li: (_parse(li.updated) if li.updated else datetime.min, li.item_id))
    return landed, Cursor(collection=spec.collection, watermark=watermark, seen=seen)


def ordered_ids(landed: Sequence[LandedItem]) -> list[str]:
    """The item ids of ``landed`` in order."""
    return [li.item_id for li in landed]
