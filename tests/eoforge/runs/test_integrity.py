"""Stored models are verified against their item's checksums; damaged ones are quarantined."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from eoforge.runs.integrity import check_stored_model, reusable_model

FILES = {
    "model.onnx": b"onnx bytes",
    "model.safetensors": b"safetensors bytes",
    "model.json": b"{}",
    "training.json": b"{}",
}


def model_folder(root: Path) -> Path:
    d = root / "store" / "models" / "abc"
    d.mkdir(parents=True)
    for name, data in FILES.items():
        (d / name).write_bytes(data)
    assets = {
        key: {
            "href": f"./{name}",
            "file:checksum": "1220" + hashlib.sha256(FILES[name]).hexdigest(),
        }
        for key, name in (
            ("model", "model.onnx"),
            ("weights", "model.safetensors"),
            ("config", "model.json"),
        )
    }
    (d / "model-item.json").write_text(json.dumps({"assets": assets}))
    return d


def test_intact_model_is_reused(tmp_path: Path) -> None:
    d = model_folder(tmp_path)
    assert check_stored_model(d) is None
    assert reusable_model(d) and d.is_dir()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"garbage"), "'model.onnx' does not match"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x80\x04pickle"), "'model.safetensors'"),
        (lambda d: (d / "model.onnx").unlink(), "'model.onnx' is missing"),
        (lambda d: (d / "model-item.json").write_text("{"), "cannot be read"),
        (lambda d: (d / "model-item.json").write_text('{"assets": {}}'), "no checksums"),
    ],
)
def test_damaged_model_is_quarantined_not_deleted(tmp_path: Path, damage: object, why: str) -> None:
    d = model_folder(tmp_path)
    damage(d)  # type: ignore[operator]
    reason = check_stored_model(d)
    assert reason is not None and why in reason
    assert not reusable_model(d)
    assert not d.exists()
    (kept,) = d.parent.glob(".quarantine-abc.*")
    assert (kept / "training.json").read_bytes() == b"{}"  # moved aside whole, for inspection
