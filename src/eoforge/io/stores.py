"""Zarr stores and files addressed by local paths or fsspec URIs (``s3://``), published atomically.

Local stores are staged in a hidden sibling folder and renamed into place
(:func:`eoforge.io.atomic.staged_dir`). Object stores have no rename: a store is staged under a
hidden sibling prefix, then copied into place with its root ``zarr.json`` written *last* (and
deleted *first* when replacing an older store), so a partly copied store never opens as a group.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import zarr

from eoforge.errors import InputError
from eoforge.io.atomic import staged_dir, staged_file
from eoforge.io.atomic import staging_path as owned_staging

__all__ = [
    "ENV_S3_TIMEOUT_S",
    "filesystem",
    "is_remote",
    "open_group",
    "read_bytes",
    "sibling",
    "staged_store",
    "uri_exists",
    "with_deadlines",
    "write_bytes_atomic",
]

Options = Mapping[str, Any] | None


def is_remote(uri: str | Path) -> bool:
    """True for an fsspec URI other than ``file://`` (e.g. ``s3://bucket/key``)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def _local(uri: str | Path) -> Path:
    return Path(str(uri).removeprefix("file://"))


#: Seconds one S3 request may wait for an answer (``read_timeout``; connecting: at most 10 s),
#: unless the storage options bring their own ``config_kwargs``. botocore tries a request twice
#: and s3fs retries the call up to 5 times, so a stalled S3 endpoint fails a call within about
#: ten times this, instead of hanging on botocore's 60 s x 5 legacy retries per s3fs attempt.
ENV_S3_TIMEOUT_S = "EOFORGE_S3_TIMEOUT_S"


def with_deadlines(uri: str | Path, storage_options: Options) -> dict[str, Any]:
    """``storage_options`` with request deadlines for ``s3://`` URIs (:data:`ENV_S3_TIMEOUT_S`);
    values the caller set win."""
    opts = dict(storage_options or {})
    if not str(uri).startswith(("s3://", "s3a://")):
        return opts
    timeout = float(os.environ.get(ENV_S3_TIMEOUT_S, "30"))
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("connect_timeout", min(10.0, timeout))
    config.setdefault("read_timeout", timeout)
    config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
    opts["config_kwargs"] = config
    return opts


def filesystem(uri: str, storage_options: Options = None) -> tuple[Any, str]:
    """The fsspec file system of ``uri`` (with :func:`with_deadlines`) and its path in it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **with_deadlines(uri, storage_options))
    return fs, str(path)


def sibling(uri: str | Path, name: str) -> str:
    """The URI of ``name`` in the same folder / prefix as ``uri``."""
    text = str(uri).rstrip("/")
    if is_remote(text):
        return f"{text.rsplit('/', 1)[0]}/{name}"
    return str(_local(text).parent / name)


def uri_exists(uri: str | Path, storage_options: Options = None) -> bool:
    """Whether a file, folder or prefix exists at ``uri``."""
    if not is_remote(uri):
        return _local(uri).exists()
    fs, path = filesystem(str(uri), storage_options)
    return bool(fs.exists(path))


Mode = Literal["r", "r+", "a", "w", "w-"]


def open_group(uri: str | Path, mode: Mode = "r", storage_options: Options = None) -> zarr.Group:
    """Open a Zarr v3 group on a local path or fsspec URI.

    Raises:
        InputError: ``mode="r"`` and there is no group at ``uri``.
    """
    if mode == "r" and not uri_exists(uri, storage_options):
        raise InputError(f"Zarr store '{uri}' does not exist; run the stage that writes it first.")
    try:
        if is_remote(uri):
            return zarr.open_group(
                store=str(uri), mode=mode, storage_options=with_deadlines(uri, storage_options)
            )
        return zarr.open_group(str(_local(uri)), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise InputError(f"'{uri}' is not a Zarr group ({exc}); check the path.") from exc


@contextlib.contextmanager
def staged_store(uri: str | Path, storage_options: Options = None) -> Iterator[str]:
    """Yield a staging location that replaces ``uri`` only if the block succeeds."""
    if not is_remote(uri):
        with staged_dir(_local(uri)) as local_staging:
            yield str(local_staging)
        return
    target = str(uri).rstrip("/")
    parent, name = target.rsplit("/", 1)
    staging = f"{parent}/{owned_staging(name).name}"  # owner-tagged, like local staging
    fs, staging_path = filesystem(staging, storage_options)
    try:
        yield staging
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(staging_path, recursive=True)
        raise
    _publish(fs, staging_path, filesystem(target, storage_options)[1])


def _publish(fs: Any, staging: str, target: str) -> None:
    if fs.exists(target):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{target}/zarr.json")  # the old store stops reading as a group first
        with contextlib.suppress(FileNotFoundError):  # gone with its last object
            fs.rm(target, recursive=True)
    files = sorted(str(f) for f in fs.find(staging))
    root_meta = f"{staging}/zarr.json"
    body = [f for f in files if f != root_meta]
    if body:
        fs.copy(body, [target + f[len(staging) :] for f in body])
    if root_meta in files:
        fs.copy(root_meta, f"{target}/zarr.json")
    fs.rm(staging, recursive=True)
    fs.invalidate_cache()


def write_bytes_atomic(uri: str | Path, data: bytes, storage_options: Options = None) -> str:
    """Write ``data`` to ``uri`` atomically (rename locally; one PUT on object stores).

    Returns:
        The sha256 of ``data``.
    """
    if is_remote(uri):
        fs, path = filesystem(str(uri), storage_options)
        fs.pipe_file(path, data)
    else:
        with staged_file(_local(uri)) as tmp:
            tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def read_bytes(uri: str | Path, storage_options: Options = None) -> bytes:
    """The bytes of a file at a local path or URI.

    Raises:
        InputError: there is no such file.
    """
    try:
        if is_remote(uri):
            fs, path = filesystem(str(uri), storage_options)
            return bytes(fs.cat_file(path))
        return _local(uri).read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"file '{uri}' does not exist; check the path.") from exc
