"""Run locks of eoforge.ops.zombies (the Prefect side is tested against a real server in
tests/orchestration/test_zombies.py)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eoforge.errors import InputError, TransientError
from eoforge.ops.zombies import RunLock, find_zombies, read_locks


def test_run_lock_is_written_touched_and_removed(tmp_path: Path) -> None:
    with RunLock(tmp_path, "run-1", interval_s=0.05) as lock:
        data = json.loads(lock.path.read_text())
        assert data["pid"] == os.getpid() and data["flow_run_id"] == "run-1"
        first = lock.path.stat().st_mtime_ns
        time.sleep(0.2)
        assert lock.path.stat().st_mtime_ns > first  # the heartbeat touches it
        info = read_locks([tmp_path])["run-1"]
        assert info.same_host and info.alive(60, datetime.now(UTC)) is True
    assert not lock.path.exists()


def test_lock_of_a_dead_process_or_silent_host_is_dead(tmp_path: Path) -> None:
    (tmp_path / "a.lock.json").write_text(
        json.dumps({"flow_run_id": "a", "pid": 2**22 + 12345, "host_tag": "nothere"})
    )
    info = read_locks([tmp_path])["a"]
    now = datetime.now(UTC)
    assert not info.same_host
    assert info.alive(60, now) is None  # another host, touched just now: cannot tell
    assert info.alive(60, now + timedelta(seconds=120)) is False
    (tmp_path / "broken.lock.json").write_text("{")
    assert set(read_locks([tmp_path, tmp_path / "missing"])) == {"a"}


def test_bad_lock_name_and_unreachable_api(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot name a lock file"), RunLock(tmp_path, "../x"):
        pass
    with pytest.raises(TransientError, match="unreachable"):
        find_zombies("http://127.0.0.1:9/api", timeout_s=1)
