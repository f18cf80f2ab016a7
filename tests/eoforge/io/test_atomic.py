from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from eoforge.io.atomic import clean_stale_staging, sha256_tree, staged_dir, write_json_atomic


def test_staged_dir_publishes_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(target) as d:
        (d / "half.txt").write_text("x")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with staged_dir(target) as d:
        (d / "a.txt").write_text("a")
    assert (target / "a.txt").read_text() == "a"


def test_staged_dir_replaces_previous_and_keeps_it_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with staged_dir(target) as d:
        (d / "v").write_text("1")
    with pytest.raises(ValueError), staged_dir(target) as d:
        (d / "v").write_text("2")
        raise ValueError
    assert (target / "v").read_text() == "1"
    with staged_dir(target) as d:
        (d / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_json_is_deterministic_and_hash_tree_stable(tmp_path: Path) -> None:
    h1 = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    h2 = write_json_atomic(tmp_path / "a.json", {"a": [1, 2], "b": 1})
    assert h1 == h2


def test_tree_hash_follows_content_and_names_only(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.json").write_text("1")
    (a / "sub" / "y.bin").write_bytes(b"\0\1")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # same files elsewhere, other mtimes: same hash
    os.utime(b / "x.json", (0, 0))
    assert sha256_tree(a) == sha256_tree(b)
    (b / "sub" / "y.bin").write_bytes(b"\0\2")  # one byte
    assert sha256_tree(a) != sha256_tree(b)
    shutil.rmtree(b)
    shutil.copytree(a, b)
    (b / "sub" / "y.bin").rename(b / "sub" / "z.bin")  # one name
    assert sha256_tree(a) != sha256_tree(b)
    (b / "sub" / "z.bin").rename(b / "sub" / "y.bin")
    (b / "sub" / "empty.txt").write_text("")  # one more (empty) file
    assert sha256_tree(a) != sha256_tree(b)


def test_clean_stale_staging_touches_only_names_eoforge_writes(tmp_path: Path) -> None:
    """A name eoforge does not write is never its to delete (issue 15: a user's
    ``.staging-notes/`` and ``.staging-area.tar`` were removed as ownerless staging)."""
    for name in (".staging-out.abc", ".staging-notes", ".staging-x.0123456789ab.12-nothex!!"):
        (tmp_path / name).mkdir()
    (tmp_path / ".staging-area.tar").write_bytes(b"tar")
    (tmp_path / "keep").mkdir()
    dead = tmp_path / ".staging-out.0123456789ab.999999999-0123abcd"  # another host, old
    dead.mkdir()
    os.utime(dead, (0, 0))
    assert clean_stale_staging(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".staging-area.tar",
        ".staging-notes",
        ".staging-out.abc",
        ".staging-x.0123456789ab.12-nothex!!",
        "keep",
    ]


def test_staging_of_a_live_writer_is_kept_and_of_a_dead_one_reaped(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from eoforge.io.atomic import reap_dead_staging, staging_path

    target = tmp_path / "cube.zarr"
    mine = staging_path(target)
    mine.mkdir()
    dead_pid = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{dead_pid}-")
    dead.mkdir()
    assert clean_stale_staging(tmp_path) == [dead]
    assert mine.exists()
    dead.mkdir()
    assert reap_dead_staging(target) == [dead]
    with staged_dir(target) as d:  # a new write of the target reaps dead siblings too
        (d / "zarr.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "cube.zarr"])
