"""Atomic, checksummed writes: stage next to the target, then rename into place.

A killed process leaves at most a hidden ``.staging-*`` sibling, never a target that reads as
valid; a re-run replaces it. Staging names carry their owner (a random id, the pid and a host
tag), so leftovers of dead processes are reaped by the next write of the same target, and
:func:`clean_stale_staging` never deletes the staging folder of a run that is still alive, nor
anything whose name eoforge did not write (a user's ``.staging-notes/`` stays).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from eoforge.errors import TransientError

__all__ = [
    "STALE_AFTER_S",
    "clean_stale_staging",
    "pid_alive",
    "reap_dead_staging",
    "sha256_file",
    "sha256_tree",
    "staged_dir",
    "staged_file",
    "staging_path",
    "transient_storage_errors",
    "write_json_atomic",
    "write_text_atomic",
]

_STAGING = ".staging-"
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
#: The whole name of a staging entry eoforge wrote (:func:`_staging_path`): target name, an
#: optional kind, 12 hex digits of a uuid4, the owner's pid and host tag. Nothing else is ever
#: treated as eoforge's staging.
_OWNER = re.compile(r"^\.staging-.+\.(?:old\.)?[0-9a-f]{12}\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})$")
#: Staging entries of another host (or of unknown owner) older than this are stale.
STALE_AFTER_S = 24 * 3600.0


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


def _owner_suffix() -> str:
    return f"{os.getpid()}-{_HOST_TAG}"


def staging_path(target: Path | str) -> Path:
    """A fresh hidden staging path next to ``target`` that records its owner (pid, host tag).

    Writers that stage by hand (not through :func:`staged_dir` / :func:`staged_file`) should
    name their staging this way, so :func:`clean_stale_staging` can tell a live writer's
    staging from a dead one's.
    """
    return _staging_path(Path(target))


def _staging_path(target: Path, kind: str = "") -> Path:
    return (
        target.parent / f"{_STAGING}{target.name}.{kind}{uuid.uuid4().hex[:12]}.{_owner_suffix()}"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(entry: Path, max_age_s: float) -> bool:
    """Whether a staging entry belongs to no live writer."""
    m = _OWNER.match(entry.name)
    if m is None:
        return False  # not a name eoforge writes: someone else's file, never ours to delete
    if m["host"] == _HOST_TAG:
        return int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"]))
    try:
        age = time.time() - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def reap_dead_staging(target: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging leftovers of ``target`` whose writer is dead; return what was removed.

    Only entries with a recorded owner are considered: a dead process on this host, or an
    entry of another host older than ``max_age_s``.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix = f"{_STAGING}{target.name}."
    for p in target.parent.iterdir():
        if p.name.startswith(prefix) and _is_stale(p, max_age_s):
            _remove(p)
            removed.append(p)
    return removed


def _replace(staging: Path, target: Path) -> None:
    """Move ``staging`` onto ``target``; an existing target is swapped out, then deleted."""
    if target.exists():
        old = _staging_path(target, "old.")
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
    reap_dead_staging(target)
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


def clean_stale_staging(folder: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove staging leftovers of killed runs in ``folder``; return what was removed.

    Only entries whose whole name is one eoforge writes (``.staging-<target>.<12 hex>.<pid>-<host
    tag>``) are considered: anything else starting with ``.staging-`` (a user's
    ``.staging-notes/``, ``.staging-area.tar``, leftovers of an eoforge before owner tags) is
    never touched. An entry is left alone while its writer may still be alive: a live process
    on this host, or an entry of another host younger than ``max_age_s``.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(_STAGING) and _is_stale(p, max_age_s):
            _remove(p)
            removed.append(p)
    return removed


P = ParamSpec("P")
R = TypeVar("R")
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _client_errors() -> tuple[type[Exception], ...]:
    """Connection failures that botocore / aiohttp raise without wrapping them in ``OSError``
    (e.g. ``EndpointConnectionError`` once an endpoint refuses every connection)."""
    found: list[type[Exception]] = []
    try:
        from botocore.exceptions import BotoCoreError

        found.append(BotoCoreError)
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:
        from aiohttp import ClientError

        found.append(ClientError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


_STORAGE_ERRORS: tuple[type[Exception], ...] = (OSError, *_client_errors())


def transient_storage_errors(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so object-storage failures surface as a clear :class:`TransientError`.

    s3fs / botocore retry each request themselves; what still fails afterwards comes out as a
    bare ``OSError`` ("[Errno 16] Service Unavailable"). When one of the call's arguments is a
    remote URI (``s3://...``), such an error becomes a ``TransientError`` naming ``what`` and the
    URIs. Missing files and refused access keep their own types; local I/O errors pass unchanged.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except _NOT_TRANSIENT:
                raise
            except _STORAGE_ERRORS as exc:
                uris = [
                    str(a)
                    for a in (*args, *kwargs.values())
                    if isinstance(a, str | Path) and "://" in str(a)
                ]
                if not uris:
                    raise
                from eoforge.io.redact import redact

                raise TransientError(
                    f"{what} failed on object storage ({', '.join(uris)}) after the storage "
                    f"client's retries ({type(exc).__name__}: {redact(str(exc))[:200]}); check "
                    "the store and retry later."
                ) from exc

        return wrapper

    return decorate
