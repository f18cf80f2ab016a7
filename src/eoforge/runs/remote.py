"""Prediction runs on an object store (``s3://``): a model folder read from one, a run folder
published to one.

Object stores have no rename, so a run is written in a local staging folder (``TMPDIR``) and
uploaded only when it succeeds: first a marker object (:data:`MARKER`) that lists every name the
upload will write or replace, then the files, the run's ``catalog.json`` and ``provenance.json``
last, then the marker is deleted. A reader never sees a ``provenance.json`` before the outputs it
lists; an upload killed half-way leaves the marker, and the next run to the same prefix can prove
which objects were eoforge's. eoforge replaces a prefix only when every object in it is one its
``provenance.json`` or its marker names: a prefix holding anything else is refused, untouched.

Credentials and endpoints come from the environment, as for every s3fs / botocore client
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` ...).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eoforge.errors import EoforgeError, InputError, TransientError
from eoforge.io.stores import filesystem

__all__ = [
    "MARKER",
    "check_writable_prefix",
    "fetched_model",
    "publish_files",
    "publish_run",
    "remote_run",
    "remote_run_names",
]

#: Object written first and deleted last by :func:`publish_run`.
MARKER = ".eoforge-publishing.json"
#: Written after every other file, in this order.
_LAST = ("catalog.json", "provenance.json")


@contextlib.contextmanager
def _store_errors(uri: str, action: str) -> Iterator[None]:
    """Object-store failures as eoforge errors naming ``uri`` and what to check."""
    try:
        yield
    except EoforgeError:
        raise
    except PermissionError as exc:
        raise InputError(
            f"cannot {action} '{uri}': access denied ({exc}); check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_PROFILE) are allowed to."
        ) from exc
    except FileNotFoundError as exc:
        raise InputError(
            f"cannot {action} '{uri}': {exc}; check the bucket exists and is spelled right."
        ) from exc
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            raise InputError(f"cannot {action} '{uri}': {exc}.") from exc
        if isinstance(exc, BotoCoreError | OSError | TimeoutError):
            raise TransientError(
                f"cannot {action} '{uri}': the object store did not answer ({exc}); check "
                "AWS_ENDPOINT_URL and the network, then run again."
            ) from exc
        raise


def _names(fs: Any, root: str) -> dict[str, str]:
    """Relative name -> full path of every object under ``root`` (empty when there is none)."""
    if not fs.exists(root):
        return {}
    return {str(p)[len(root) + 1 :]: str(p) for p in fs.find(root) if str(p) != root}


@contextlib.contextmanager
def fetched_model(uri: str) -> Iterator[Path]:
    """A local copy of the model folder at ``uri`` (its files, not sub-folders), removed after.

    Raises:
        InputError: there is no model at ``uri`` (no ``model.onnx`` / ``model.json``).
    """
    fs, root = filesystem(uri.rstrip("/"))
    with _store_errors(uri, "read the model folder"):
        files = {n: p for n, p in _names(fs, root).items() if "/" not in n}
    missing = [n for n in ("model.onnx", "model.json") if n not in files]
    if missing:
        raise InputError(
            f"model folder '{uri}' lacks {missing}; pass the `model/` prefix of an eoforge run "
            "(or a stored model) that has an exported ONNX model, and check the credentials "
            "(AWS_* environment variables) can list it."
        )
    with tempfile.TemporaryDirectory(prefix="eoforge-model-") as tmp:
        with _store_errors(uri, "read the model folder"):
            for name, path in files.items():
                fs.get_file(path, str(Path(tmp) / name))
        yield Path(tmp)


def _owned(fs: Any, root: str, uri: str, names: dict[str, str]) -> set[str]:
    """The names eoforge can prove it wrote at ``uri``: its provenance's outputs, its marker's."""
    owned: set[str] = set()
    if "provenance.json" in names:
        try:
            record = json.loads(fs.cat_file(names["provenance.json"]))
        except (ValueError, UnicodeDecodeError):
            record = None
        outputs = record.get("outputs") if isinstance(record, dict) else None
        if isinstance(record, dict) and isinstance(record.get("eoforge_run"), str):
            prefix = f"{uri}/"
            for entry in outputs if isinstance(outputs, list) else []:
                out_uri = entry.get("uri") if isinstance(entry, dict) else None
                if isinstance(out_uri, str) and out_uri.startswith(prefix):
                    owned.add(out_uri[len(prefix) :])
            owned.add("provenance.json")
    if MARKER in names:
        with contextlib.suppress(ValueError, UnicodeDecodeError, TypeError):
            marker = json.loads(fs.cat_file(names[MARKER]))
            if isinstance(marker, dict) and marker.get("eoforge") == "publishing":
                owned |= {str(n) for n in marker.get("names", [])} | {MARKER}
    return owned


def remote_run_names(uri: str) -> set[str]:
    """The objects of a previous eoforge run at ``uri`` (empty for a new or empty prefix).

    Raises:
        InputError: the prefix holds an object eoforge cannot prove it wrote.
    """
    fs, root = filesystem(uri)
    with _store_errors(uri, "list the output prefix"):
        names = _names(fs, root)
        if not names:
            return set()
        stray = sorted(set(names) - _owned(fs, root, uri, names))
    if stray:
        raise InputError(
            f"output prefix '{uri}' is not empty and is not an eoforge run that eoforge can "
            f"prove holds only its own objects ({len(stray)} other object(s), e.g. "
            f"'{stray[0]}'); eoforge will not replace it. Pass a new or empty prefix to --out, "
            "or move those objects."
        )
    return set(names)


def publish_run(run_dir: Path, uri: str) -> None:
    """Upload the run folder ``run_dir`` to ``uri``, replacing a previous eoforge run there
    (see the module for the order)."""
    fs, root = filesystem(uri)
    old = remote_run_names(uri)  # again, just before replacing: nothing new appeared
    new = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    marker = {"eoforge": "publishing", "names": sorted(set(new) | (old - {MARKER}))}
    with _store_errors(uri, "publish the run to"):
        fs.pipe_file(f"{root}/{MARKER}", json.dumps(marker).encode())
        if "provenance.json" in old:  # the old run stops reading as complete first
            fs.rm_file(f"{root}/provenance.json")
        for name in sorted(old - set(new) - {MARKER, "provenance.json"}):
            fs.rm_file(f"{root}/{name}")
        order = [n for n in new if n not in _LAST] + [n for n in _LAST if n in new]
        for name in order:
            fs.put_file(str(run_dir / name), f"{root}/{name}")
        fs.rm_file(f"{root}/{MARKER}")
        fs.invalidate_cache()


@contextlib.contextmanager
def remote_run(uri: str) -> Iterator[Path]:
    """A local staging folder for one run, published to ``uri`` only if the block succeeds.

    ``uri`` is checked before the run starts (a foreign prefix is refused; the marker is
    written, so a missing bucket or missing write permission fails in a second, not after the
    run) and again before it is replaced.
    """
    old = remote_run_names(uri)
    fs, root = filesystem(uri)
    marker = {"eoforge": "publishing", "names": sorted(old - {MARKER})}
    with _store_errors(uri, "write to"):
        fs.pipe_file(f"{root}/{MARKER}", json.dumps(marker).encode())
    try:
        with tempfile.TemporaryDirectory(prefix="eoforge-run-") as tmp:
            run_dir = Path(tmp) / "run"
            run_dir.mkdir()
            yield run_dir
            publish_run(run_dir, uri)
    except BaseException:
        if MARKER not in old:  # nothing changed there: leave the prefix as it was
            with contextlib.suppress(Exception):
                fs.rm_file(f"{root}/{MARKER}")
        raise


def check_writable_prefix(uri: str) -> None:
    """Fail now, not after the work, where ``uri`` cannot be written (no bucket, no permission,
    no answer): a probe object is written and deleted.

    Raises:
        InputError: the bucket is missing or the credentials may not write.
        TransientError: the object store does not answer.
    """
    import uuid

    fs, root = filesystem(uri.rstrip("/"))
    probe = f"{root}/.eoforge-probe-{uuid.uuid4().hex[:12]}"
    with _store_errors(uri, "write to"):
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)


def publish_files(files: list[tuple[Path, str]], uri: str) -> None:
    """Upload each local file to its URI, in the order given (each PUT replaces one object
    whole: a reader sees the old bytes or the new ones), for a run folder that accumulates
    outputs at ``uri`` (the inference deployment's ``out``)."""
    if not files:
        return
    fs, _ = filesystem(uri.rstrip("/"))
    with _store_errors(uri, "publish to"):
        for local, target in files:
            fs.put_file(str(local), filesystem(target)[1])
        fs.invalidate_cache()
