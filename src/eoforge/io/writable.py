"""The places a run writes to (run folder, store): checked before any work, and the file-system
errors met while writing turned into errors that name the path and say what to do.

A read-only or full file system is not an eoforge bug: the user sees one paragraph naming the
path, never a traceback, and staging (:mod:`eoforge.io.atomic`) leaves nothing half-written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from eoforge.errors import EoforgeError, InputError, TransientError

__all__ = ["check_writable_dir", "is_environment_error", "os_error_as_eoforge"]

#: errno values that mean "this place cannot be written": the user must pick another.
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
#: errno values that mean "no room left": may pass once space is freed.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path("/")


def check_writable_dir(path: Path, what: str) -> None:
    """Refuse ``path`` as a folder eoforge will write to, before any work starts.

    The folder need not exist yet: its nearest existing ancestor must be a folder in which a
    file can be created (a probe file, removed at once). Nothing else is created.

    Args:
        path: the folder (``--out`` or the store).
        what: how the user names it, e.g. ``"--out"`` or ``"the store (--store / EOFORGE_STORE)"``.

    Raises:
        InputError: ``path`` or an ancestor is a file, or the place is read-only / not ours.
        TransientError: the file system is full.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{what} '{path}' is a file, not a folder; pass a folder path (it is created if "
            "missing), or move the file away."
        )
    base = _nearest_existing(path)
    if not base.is_dir():
        raise InputError(
            f"{what} '{path}' cannot be created: '{base}' on its way is a file, not a folder; "
            "pass a path whose parents are folders."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".eoforge-probe-", dir=base)
    except OSError as exc:
        raise os_error_as_eoforge(exc, what, base) from exc
    os.close(fd)
    os.unlink(probe)


def is_environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a file system refusing a write (read-only, access, full)."""
    return isinstance(exc, OSError) and exc.errno in _NOT_WRITABLE | _NO_SPACE


def os_error_as_eoforge(exc: OSError, what: str, path: Path | str | None = None) -> EoforgeError:
    """The eoforge error for a file-system failure while writing ``what``; one paragraph.

    Read-only places and refused access are :class:`InputError` (pick another place); a full
    disk or quota is :class:`TransientError` (free space, then rerun: the store keeps what
    finished). Anything else is returned as an :class:`InputError` naming the path too.
    """
    name = path or exc.filename
    reason = exc.strerror or str(exc)
    where = f"'{name}': {reason}" if name else reason
    if exc.errno in _NO_SPACE:
        return TransientError(
            f"no space left while writing {what} ({where}); nothing half-written "
            "was published. Free space on that file system (or point --out / --store at a "
            "larger one) and run again: finished stages are reused from the store."
        )
    if exc.errno in _NOT_WRITABLE:
        return InputError(
            f"eoforge cannot write {what} ({where}); the place is read-only or "
            "belongs to someone else. Pass a folder you can write to (--out, --store or "
            "EOFORGE_STORE), or fix its permissions."
        )
    return InputError(
        f"eoforge cannot write {what} ({where}); check that the path is a "
        "folder on a working file system you can write to."
    )
