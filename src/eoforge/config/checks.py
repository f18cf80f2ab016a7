"""Checks of spec values that pydantic's types cannot express: STAC datetimes, STAC API URLs,
lon/lat boxes. Each raises ValueError with a message that names the field and the fix."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

__all__ = ["check_api_url", "check_bbox", "check_stac_datetime"]


#: One end of a STAC datetime: a year, a month, a day or a full RFC 3339 timestamp (what
#: pystac-client accepts).
_DATETIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?P<time>[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[-+]\d{2}:\d{2})?)?)?)?$"
)


def _datetime_end(text: str, field: str, whole: str) -> tuple[datetime, datetime]:
    """The first instant one end of a STAC datetime stands for, and the instant after it
    (equal for a full timestamp)."""
    m = _DATETIME.match(text)
    if m is None:
        raise ValueError(
            f"{field} '{whole}': '{text}' is not an RFC 3339 date or datetime; write e.g. "
            "'2023-08-01', '2023-08', '2023-08-01T10:00:00Z', or an interval "
            "'2023-08-01/2023-08-31' (open ends as '..')"
        )
    try:
        if m["time"]:
            moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment, moment
        year, month, day = int(m["year"]), int(m["month"] or 1), int(m["day"] or 1)
        first = datetime(year, month, day, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"{field} '{whole}': '{text}' is not a real date or time ({exc})") from exc
    if m["day"]:
        end = first + timedelta(days=1)
    elif m["month"]:
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    else:
        end = datetime(year + 1, 1, 1, tzinfo=UTC)
    return first, end


def check_stac_datetime(value: str, field: str = "stac.datetime") -> str:
    """Refuse a STAC datetime (or interval) that the search would fail on.

    Raises:
        ValueError: the text is not an RFC 3339 date/datetime or ``start/end`` interval, or the
            interval ends before it starts.
    """
    parts = value.split("/")
    if len(parts) > 2 or not value.strip():
        raise ValueError(
            f"{field} '{value}' is not a datetime or a 'start/end' interval; write e.g. "
            "'2023-08-01/2023-08-31'"
        )
    if len(parts) == 1:
        _datetime_end(parts[0], field, value)
        return value
    ends = [None if p in ("", "..") else _datetime_end(p, field, value) for p in parts]
    if ends[0] is None and ends[1] is None:
        raise ValueError(f"{field} '{value}' is open at both ends; give a start or an end")
    if ends[0] is not None and ends[1] is not None and ends[0][0] > ends[1][1]:
        raise ValueError(
            f"{field} '{value}' ends before it starts; write 'start/end' with start first"
        )
    return value


def check_api_url(url: str, field: str = "stac.api_url") -> str:
    """Refuse a STAC API URL that is not an absolute http(s) URL.

    Raises:
        ValueError: no scheme (``example.com/stac``), another scheme, or no host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f" (did you mean 'https://{url}'?)" if "://" not in url else ""
        raise ValueError(
            f"{field} '{url}' is not an http(s) URL of a STAC API{hint}; write it with its "
            "scheme and host, e.g. 'https://earth-search.aws.element84.com/v1'"
        )
    return url


def check_bbox(bbox: tuple[float, float, float, float], field: str = "stac.bbox") -> None:
    """Refuse a search box that is not west, south, east, north in lon/lat degrees.

    Raises:
        ValueError: a coordinate out of range, south above north, west/east swapped, or a box
            across the antimeridian (which eoforge cannot build one cube over).
    """
    west, south, east, north = bbox
    shown = list(bbox)
    if not (
        -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90
    ):
        raise ValueError(
            f"{field} {shown} is not a lon/lat box (west, south, east, north with "
            "-180 <= lon <= 180, -90 <= lat <= 90); fix it"
        )
    if south > north:
        raise ValueError(
            f"{field} {shown} has south {south} above north {north}; the order is west, "
            "south, east, north"
        )
    if west > east:
        if west - east < 180:  # a box across 180° spans from near +180 to near -180
            raise ValueError(
                f"{field} {shown} has west {west} east of east {east}: the two are swapped; "
                f"the order is west, south, east, north (e.g. [{east}, {south}, {west}, {north}])"
            )
        raise ValueError(
            f"{field} {shown} crosses the antimeridian (west {west} > east {east}); eoforge "
            "cannot build one cube across 180°: search each side separately"
        )
