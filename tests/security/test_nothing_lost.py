"""User data is never deleted and bad places to write fail before any work (issue 15, classes 1
and 4).

eoforge removes only what it can prove it wrote: staging entries whose whole name is one it
writes, and a previous run folder whose ``provenance.json`` is an eoforge record listing every
file in it. A read-only, full or file-shaped ``--out`` / store is one paragraph naming the path
(exit 2, a full disk exit 4), never a traceback, with nothing half-written left behind.
Everything runs through the command line, as a user meets it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from eoforge.errors import InputError
from eoforge.io.atomic import staging_path
from eoforge.runs.pipeline import check_out_dir

Cli = Callable[..., subprocess.CompletedProcess[str]]
#: a search that finds nothing: fails (exit 2) right after the run folder was staged
NO_ITEMS = "stac:\n  bbox: [0.0, 0.0, 0.5, 0.5]\n"


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def user_text(proc: subprocess.CompletedProcess[str]) -> str:
    return " ".join(proc.stderr.split())


def config(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "cfg" / "run.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(body)
    return cfg


# --------------------------------------------------------------------------- the run folder


def test_folder_with_another_tools_provenance_is_not_replaced(
    eoforge_cli: Cli, tmp_path: Path
) -> None:
    results = tmp_path / "ws" / "results"
    results.mkdir(parents=True)
    (results / "provenance.json").write_text(json.dumps({"tool": "other", "outputs": []}))
    (results / "analysis.md").write_text("# three weeks of work\n")
    before = tree(tmp_path / "ws")
    proc = eoforge_cli(
        "run", "--config", str(config(tmp_path, "{}\n")), "--plain",
        "--out", str(results), "--store", str(tmp_path / "store"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = user_text(proc)
    assert str(results) in text and "not written by eoforge" in text, text
    assert "Traceback" not in proc.stderr
    assert tree(tmp_path / "ws") == before


def _eoforge_run(folder: Path, extra: dict[str, str] | None = None) -> None:
    """A folder as an eoforge run leaves it (provenance listing its outputs), plus ``extra``."""
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "X.tif").write_bytes(b"tif")
    (folder / "report.html").write_text("<html/>")
    outputs = [
        {"uri": (folder / rel).as_uri(), "sha256": "0" * 64, "kind": "x"}
        for rel in ("predictions/X.tif", "report.html")
    ]
    record = {"eoforge_run": folder.name, "spec_fingerprint": "f" * 64, "outputs": outputs}
    (folder / "provenance.json").write_text(json.dumps(record))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)


def test_previous_eoforge_run_is_replaceable(tmp_path: Path) -> None:
    _eoforge_run(tmp_path / "run 1")  # a space in the name: URIs are percent-encoded
    check_out_dir(tmp_path / "run 1")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"analysis.md": "mine"}, "'analysis.md' is not one of the outputs"),
        ({"predictions/notes.txt": "mine"}, "'predictions/notes.txt'"),
    ],
)
def test_previous_eoforge_run_with_a_user_file_is_not_replaced(
    tmp_path: Path, extra: dict[str, str], named: str
) -> None:
    run = tmp_path / "run"
    _eoforge_run(run, extra)
    with pytest.raises(InputError, match="will not replace it") as info:
        check_out_dir(run)
    assert named in str(info.value)


@pytest.mark.parametrize(
    "provenance",
    [
        "not json {",
        "[1, 2]",
        json.dumps({"eoforge_run": "x", "spec_fingerprint": "f", "outputs": "all"}),
        json.dumps(
            {
                "eoforge_run": "x",
                "spec_fingerprint": "f",
                "outputs": [{"uri": "file:///elsewhere/report.html"}],
            }
        ),
    ],
)
def test_provenance_that_proves_nothing_keeps_the_folder(tmp_path: Path, provenance: str) -> None:
    (tmp_path / "provenance.json").write_text(provenance)
    with pytest.raises(InputError, match="not an eoforge run that eoforge can prove"):
        check_out_dir(tmp_path)


# --------------------------------------------------------------------------- staging clean-up


def test_staging_cleanup_keeps_the_users_staging_named_entries(
    eoforge_cli: Cli, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    (ws / ".staging-notes").mkdir(parents=True)
    (ws / ".staging-notes" / "todo.md").write_text("ask about the AOI\n")
    (ws / ".staging-area.tar").write_bytes(b"tar" * 100)
    (ws / ".staging-newrun.abc").mkdir()  # eoforge-like, but not a name eoforge writes
    (ws / ".staging-newrun.0123456789ab.1-zzzzzzzz").write_text("no host tag")
    users = tree(ws)
    mine = staging_path(ws / "newrun").name  # .staging-newrun.<12 hex>.<pid>-<host tag>
    dead = ws / re.sub(r"\.\d+-([0-9a-f]{8})$", r".999999999-\1", mine)
    dead.mkdir()  # a killed eoforge's staging (a pid that cannot be alive): reaped
    proc = eoforge_cli(
        "run", "--config", str(config(tmp_path, NO_ITEMS)), "--plain",
        "--out", str(ws / "newrun"), "--store", str(tmp_path / "store"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "returned no items" in user_text(proc)
    assert tree(ws) == users, "eoforge removed or left something"


# --------------------------------------------------------------------------- places


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="needs unshare + mount (root) for a read-only / full file system"
)


def _on_tmpfs(mnt: Path, options: str, listing: Path) -> list[str]:
    """Run under a private mount namespace with a tmpfs at ``mnt``; list it after the run."""
    script = (
        f'mount -t tmpfs -o {options} tmpfs "{mnt}" && "$0" "$@"; rc=$?; '
        f'find "{mnt}" -mindepth 1 > "{listing}"; exit $rc'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


@needs_mount
@pytest.mark.parametrize("where", ["out", "store"])
def test_read_only_place_is_one_paragraph(eoforge_cli: Cli, tmp_path: Path, where: str) -> None:
    mnt, listing = tmp_path / "mnt", tmp_path / "listing.txt"
    mnt.mkdir()
    out = mnt / "run" if where == "out" else tmp_path / "run"
    store = mnt / "store" if where == "store" else tmp_path / "store"
    proc = eoforge_cli(
        "run", "--config", str(config(tmp_path, "{}\n")), "--plain",
        "--out", str(out), "--store", str(store),
        prefix=_on_tmpfs(mnt, "size=1m,ro", listing),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = user_text(proc)
    assert "Read-only file system" in text and str(mnt) in text, text
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


@needs_mount
@pytest.mark.slow
def test_full_disk_is_one_paragraph_and_publishes_nothing(eoforge_cli: Cli, tmp_path: Path) -> None:
    mnt, listing = tmp_path / "mnt", tmp_path / "listing.txt"
    mnt.mkdir()
    proc = eoforge_cli(
        "run", "--config", str(config(tmp_path, "{}\n")), "--plain",
        "--out", str(tmp_path / "run"), "--store", str(mnt / "store"),
        prefix=_on_tmpfs(mnt, "size=600k", listing),
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "no space left" in user_text(proc)
    assert "Traceback" not in proc.stderr
    left = listing.read_text().split()
    assert all("/.staging-" not in p for p in left), left  # nothing half-written stays
    assert not any(p.endswith(".zarr") for p in left), left
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["out", "store", "out-parent"])
def test_path_that_is_a_file_is_one_paragraph(eoforge_cli: Cli, tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out = {"out": a_file, "out-parent": a_file / "run"}.get(where, tmp_path / "run")
    store = a_file if where == "store" else tmp_path / "store"
    proc = eoforge_cli(
        "run", "--config", str(config(tmp_path, "{}\n")), "--plain",
        "--out", str(out), "--store", str(store),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = user_text(proc)
    assert str(a_file) in text and "is a file" in text, text
    assert a_file.read_text() == "not a folder"
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_file_added_to_the_old_run_during_the_run_is_not_lost(tmp_path: Path) -> None:
    """``--out`` is checked again just before it is replaced."""
    from eoforge.runs.pipeline import run_context

    out = tmp_path / "run"
    _eoforge_run(out)
    before = tree(tmp_path)
    refused = pytest.raises(InputError, match=r"'notes\.md' is not one of the outputs")
    with refused, run_context(out) as staging:
        (staging / "report.html").write_text("new run")
        (out / "notes.md").write_text("written while the run was going")
    after = tree(tmp_path)
    assert after.pop("run/notes.md") == b"written while the run was going"
    assert after == before  # old run intact, no staging left
