"""A trained model directory on disk: ``model.safetensors`` + ``model.json`` (ADR 0001).

Only safetensors weights are ever read: a pickled torch checkpoint is refused, never unpickled,
because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from eoforge.errors import InputError
from eoforge.io.atomic import sha256_file
from eoforge.training.models import ARCHITECTURE, DEPTH, build_model

__all__ = [
    "MODEL_CONFIG_NAME",
    "MODEL_FORMAT",
    "MODEL_WEIGHTS_NAME",
    "load_model",
    "read_model_config",
]

#: File name of the weights inside a model directory.
MODEL_WEIGHTS_NAME = "model.safetensors"
#: File name of the architecture / hyper-parameter record inside a model directory.
MODEL_CONFIG_NAME = "model.json"
#: Version tag written to and required in ``model.json``.
MODEL_FORMAT = "eoforge-model/1"

_SAFETENSORS_MAX_HEADER = 100_000_000


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The ``model.json`` of a model directory.

    Raises:
        InputError: it is missing, not JSON, or not an eoforge model record.
    """
    path = Path(model_dir) / MODEL_CONFIG_NAME
    if not path.is_file():
        raise InputError(
            f"model directory '{model_dir}' has no {MODEL_CONFIG_NAME}; pass a directory written "
            "by the train stage."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"'{path}' is not valid JSON ({exc}); retrain the model.") from exc
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise InputError(
            f"'{path}' is not a {MODEL_FORMAT} record; retrain the model with this eoforge version."
        )
    return config


def load_model(model_dir: Path) -> nn.Module:
    """Rebuild a trained network from ``model.json`` + ``model.safetensors``, in eval mode.

    Only safetensors weights are read; a pickle (``torch.save`` file) is refused, never
    unpickled, because unpickling runs arbitrary code.

    Raises:
        InputError: the files are missing, the weights are not safetensors, their sha256
            differs from the one recorded, or they do not match the recorded architecture.
    """
    config = read_model_config(model_dir)
    weights_name = str(config.get("weights", MODEL_WEIGHTS_NAME))
    weights_path = Path(model_dir) / weights_name
    if Path(weights_name).name != weights_name or not weights_name.endswith(".safetensors"):
        raise InputError(
            f"model.json in '{model_dir}' names weights '{weights_name}': only a .safetensors "
            "file inside the model directory is accepted (pickled checkpoints are refused)."
        )
    if not weights_path.is_file():
        raise InputError(f"model weights '{weights_path}' do not exist; retrain the model.")
    _require_safetensors(weights_path)
    expected_sha = config.get("weights_sha256")
    if expected_sha is not None and sha256_file(weights_path) != expected_sha:
        raise InputError(
            f"model weights '{weights_path}' do not match the sha256 in model.json (a training "
            "run was interrupted or the files were mixed); retrain the model."
        )
    try:
        state = load_file(str(weights_path))
    except SafetensorError as exc:
        raise InputError(
            f"model weights '{weights_path}' are not valid safetensors: {exc}"
        ) from exc
    arch = config.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") != ARCHITECTURE or arch.get("depth") != DEPTH:
        found = (arch.get("name"), arch.get("depth")) if isinstance(arch, dict) else arch
        raise InputError(
            f"model in '{model_dir}' has architecture {found!r}; this eoforge builds "
            f"{ARCHITECTURE!r} of depth {DEPTH}: retrain the model."
        )
    try:
        model = build_model(
            int(arch["in_channels"]),
            int(arch["num_classes"]),
            int(arch["base_channels"]),
            config["band_mean"],
            config["band_std"],
            [(int(a), int(b)) for a, b in arch.get("index_pairs", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"model.json in '{model_dir}' lacks or garbles {exc}; retrain the model."
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(
            f"weights '{weights_path}' do not fit the architecture in model.json: {exc}"
        ) from exc
    return model.eval()


def _require_safetensors(path: Path) -> None:
    """Refuse a file that does not start like safetensors (8-byte length + JSON header)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or not 0 < size < _SAFETENSORS_MAX_HEADER or head[8:9] != b"{":
        kind = (
            "a zip/pickle torch checkpoint"
            if head[:2] in (b"PK", b"\x80\x02")
            else "not safetensors"
        )
        raise InputError(
            f"model weights '{path}' are {kind}; eoforge only loads safetensors (never pickles). "
            "Re-save the state dict with safetensors.torch.save_file or retrain."
        )
