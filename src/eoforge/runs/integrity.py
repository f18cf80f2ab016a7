"""Stored products are checked before they are reused; a damaged one is quarantined, not trusted.

A model folder in the store is reused by every later run with the same cache key, so one bad
byte (a garbage ``model.onnx``, a pickle written over ``model.safetensors``) would fail, or
worse serve, every run after it. Its ``model-item.json`` pins the sha256 of each file
(``file:checksum``); a folder whose files do not match is moved aside to a
``.quarantine-<name>.<time>`` sibling (kept for inspection, never deleted) and rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from eoforge.io.atomic import sha256_file

__all__ = ["check_stored_model", "quarantine", "reusable_model"]

_log = logging.getLogger(__name__)
_REQUIRED = ("model-item.json", "training.json", "model.json", "model.onnx", "model.safetensors")


def check_stored_model(model_dir: Path) -> str | None:
    """Why a stored model folder cannot be trusted, or None when every file matches its item."""
    for name in _REQUIRED:
        if not (model_dir / name).is_file():
            return f"'{name}' is missing"
    try:
        item = json.loads((model_dir / "model-item.json").read_text())
        assets = item["assets"]
        json.loads((model_dir / "training.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its model-item.json / training.json cannot be read ({exc})"
    checked = 0
    for key, asset in assets.items():
        href, checksum = asset.get("href"), asset.get("file:checksum")
        if not isinstance(href, str) or not isinstance(checksum, str):
            continue
        path = model_dir / href.removeprefix("./")
        if path.parent != model_dir or not path.is_file():
            return f"asset '{key}' ({href}) is not a file of the folder"
        if sha256_file(path) != checksum[4:]:
            return f"'{path.name}' does not match the sha256 in model-item.json"
        checked += 1
    if checked == 0:
        return "its model-item.json lists no checksums"
    return None


def quarantine(path: Path, why: str) -> Path:
    """Move a damaged stored product aside (same folder, hidden name); return where it went."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f".quarantine-{path.name}.{stamp}.{os.getpid()}")
    os.replace(path, target)
    _log.warning(
        "stored product %s is damaged (%s): moved to %s and rebuilt", path, why, target.name
    )
    return target


def reusable_model(model_dir: Path) -> bool:
    """Whether a stored model folder exists and can be reused; a damaged one is quarantined."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        return False
    why = check_stored_model(model_dir)
    if why is None:
        return True
    quarantine(model_dir, why)
    return False
