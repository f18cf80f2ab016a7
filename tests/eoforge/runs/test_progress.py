"""Tests of eoforge.runs.progress: stage starts and ends reach the listeners, and only them."""

from __future__ import annotations

import pytest

from eoforge.runs.progress import listening, stage


def test_listeners_hear_starts_and_ends() -> None:
    heard: list[tuple[str, float | None]] = []
    with listening(lambda name, seconds: heard.append((name, seconds))):
        with stage("ingest"):
            pass
        with pytest.raises(ValueError), stage("chips"):
            raise ValueError("boom")
    with stage("train"):  # nobody listens any more
        pass
    assert [(n, s is None) for n, s in heard] == [
        ("ingest", True),
        ("ingest", False),
        ("chips", True),  # a failed stage starts but never reports an end
    ]
    assert heard[1][1] is not None and heard[1][1] >= 0
