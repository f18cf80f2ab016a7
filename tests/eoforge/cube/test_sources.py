"""Cube slices are named by the items odc-stac put in them (solar day), and local sources."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.cube.sources import decoded_local_hrefs, local_sources, slice_item_ids, solar_day


def _item(item_id: str, when: str) -> dict[str, Any]:
    return {"id": item_id, "properties": {"datetime": when}, "assets": {}}


def test_items_of_one_utc_date_on_two_solar_days_near_180() -> None:
    """Issue 15, class 9: at 179.5°E (UTC+11 h) 11:30Z and 13:30Z of 2023-08-10 are two solar
    days; grouped by UTC date both slices were named "A+B"."""
    a, b = _item("A", "2023-08-10T11:30:00Z"), _item("B", "2023-08-10T13:30:00Z")
    times = np.array(["2023-08-10T11:30:00", "2023-08-10T13:30:00"], dtype="datetime64[ns]")
    assert slice_item_ids([a, b], times, 179.5) == ["A", "B"]
    assert solar_day(datetime(2023, 8, 10, 13, 30), 179.5) == date(2023, 8, 11)


def test_one_solar_day_across_two_utc_dates_is_one_slice() -> None:
    a, b = _item("A", "2023-08-10T23:30:00Z"), _item("B", "2023-08-11T00:30:00+00:00")
    times = np.array(["2023-08-10T23:30:00"], dtype="datetime64[ns]")
    assert slice_item_ids([a, b], times, -120.0) == ["A+B"]  # UTC-8 h: both on 2023-08-10


def test_bundled_sample_keeps_its_slice_names(real_items: list[dict[str, Any]]) -> None:
    """At 15°E the solar day is the UTC date for these ~10:00Z scenes: names do not change."""
    twl = [it for it in real_items if "33TWL" in it["id"]]
    times = np.array(
        sorted({it["properties"]["datetime"][:19] for it in twl}), dtype="datetime64[ns]"
    )
    by_date: dict[str, list[str]] = {}
    for it in twl:
        by_date.setdefault(it["properties"]["datetime"][:10], []).append(it["id"])
    expected = ["+".join(by_date[str(t)[:10]]) for t in times]
    assert slice_item_ids(twl, times, 15.4) == expected


def test_local_sources_and_decoded_hrefs(tmp_path: Path) -> None:
    d = tmp_path / "cat space"
    item = {"id": "A", "assets": {"blue": {"href": (d / "B02.tif").as_uri()}}}
    assert "%20" in item["assets"]["blue"]["href"]
    assert decoded_local_hrefs(item)["assets"]["blue"]["href"] == f"file://{d}/B02.tif"
    hrefs = {"A": {"blue": (d / "B02.tif").as_uri()}, "B": {"blue": "https://x.org/B02.tif"}}
    assert local_sources(hrefs, "A", "blue") == [d / "B02.tif"]
    assert local_sources(hrefs, "A+B", "blue") == []  # one remote source: reads are retried
