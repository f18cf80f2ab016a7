"""Atomic, checksummed writes: stage next to the target, then rename into place.

A killed process leaves at most a hidden ``.staging-*`` sibling, never a target that reads as
valid; a re-run replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "clean_stale_staging",
    "sha256_file",
    "sha256_tree",
    "staged_dir",
    "staged_file",
    "write_json_atomic",
    "write_text_atomic",
]

_STAGING = ".staging-"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """Hex sha256 over every file of a directory tree (relative path + content, sorted)."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _staging_path(target: Path) -> Path:
    return target.parent / f"{_STAGING}{target.name}.{uuid.uuid4().hex[:12]}"


def _replace(staging: Path, target: Path) -> None:
    """Move ``staging`` onto ``target``; an existing target is swapped out, then deleted."""
    if target.exists():
        old = target.parent / f"{_STAGING}{target.name}.old.{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
        os.replace(staging, target)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``target`` only if the block succeeds.

    On an exception the staging directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(target)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace(staging, target)


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; renamed onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_path(target)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_text_atomic(path: Path, text: str) -> str:
    """Write text atomically; return its sha256."""
    with staged_file(path) as tmp:
        tmp.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> str:
    """Write JSON deterministically (sorted keys, 2-space indent) and atomically; return sha256."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def clean_stale_staging(folder: Path) -> list[Path]:
    """Remove staging leftovers of killed runs in ``folder``; return what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(_STAGING):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
