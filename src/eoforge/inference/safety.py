"""Refuse ONNX models whose external tensor data lives outside the model's own folder.

An ONNX file may keep large tensors in *external data* files named by a relative ``location``
inside the protobuf. A hostile model can name ``../../etc/passwd`` or ``/proc/self/environ``
and make the runtime read (and, through the outputs, leak) any file the process can read.
:func:`check_onnx_external_data` inspects the protobuf without loading any external data and
refuses every location that is absolute, climbs with ``..``, leaves the folder through a
symlink, does not exist, or asks for bytes past the end of its file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eoforge.errors import InputError

__all__ = ["check_onnx_external_data"]


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers, sparse ones, attribute tensors, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_onnx_external_data(path: Path | str) -> list[str]:
    """Check that every external-data file of an ONNX model is inside the model's folder.

    Args:
        path: the ``.onnx`` file.

    Returns:
        The external data locations (relative to the model's folder) the model uses.

    Raises:
        InputError: the file is missing or not an ONNX model, or an external-data location is
            absolute, contains ``..``, resolves outside the folder, does not exist, or its
            offset / length reach past the end of the file.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model_path = Path(path)
    if not model_path.is_file():
        raise InputError(f"ONNX model '{model_path}' does not exist; export the model first.")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise InputError(
            f"ONNX model '{model_path}' cannot be loaded: not a readable ONNX protobuf "
            f"({type(exc).__name__}: {exc}); re-export the model."
        ) from exc
    folder = Path(os.path.realpath(model_path.parent))
    used: list[str] = []
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = str(info.location or "")
        where = f"ONNX model '{model_path}': tensor '{tensor.name}' has external data '{location}'"
        fix = "only files inside the model's own folder are allowed; re-export the model."
        if not location or os.path.isabs(location) or location.startswith(("\\", "/")):
            raise InputError(f"{where}, an absolute or empty path; {fix}")
        parts = location.replace("\\", "/").split("/")
        if ".." in parts:
            raise InputError(f"{where}, which climbs out of its folder with '..'; {fix}")
        target = Path(os.path.realpath(folder / location))
        if not target.is_relative_to(folder):
            raise InputError(f"{where}, which resolves outside the model folder ({target}); {fix}")
        if not target.is_file():
            raise InputError(f"{where}, which does not exist; {fix}")
        size = target.stat().st_size
        offset = int(info.offset or 0)
        length = int(info.length or 0)
        if offset < 0 or length < 0 or offset + length > size:
            raise InputError(
                f"{where} at offset {offset}, length {length}, past the end of the "
                f"{size}-byte file; the model is corrupt, re-export it."
            )
        used.append(location)
    return sorted(set(used))
