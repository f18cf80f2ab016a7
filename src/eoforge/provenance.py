"""Provenance: what a run used and produced, enough to reproduce and audit it."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from eoforge.storage import sha256_file, sha256_tree

__all__ = ["git_revision", "output_records", "package_versions"]

_PACKAGES = (
    "eoforge",
    "prefect",
    "pystac",
    "pystac-client",
    "odc-stac",
    "rasterio",
    "xarray",
    "zarr",
    "dask",
    "great-expectations",
    "torch",
    "onnx",
    "onnxruntime",
    "scikit-learn",
    "numpy",
    "rustac",
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results, plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The git commit of the eoforge checkout and whether it had uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": rev, "dirty": dirty}


def output_records(run_dir: Path, final_dir: Path | None = None) -> list[dict[str, str]]:
    """One record (uri, sha256, kind) per output of a run directory.

    Zarr stores are hashed as a whole tree; every other file on its own. URIs name the
    final location (``final_dir``) when the run is still being written in a staging folder.
    """
    base = (final_dir or run_dir).resolve()
    records: list[dict[str, str]] = []
    for p in sorted(run_dir.iterdir()):
        if p.name in {"provenance.json"}:
            continue
        if p.is_dir() and p.suffix == ".zarr":
            records.append(
                {"uri": (base / p.name).as_uri(), "sha256": sha256_tree(p), "kind": "zarr"}
            )
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(run_dir)
                records.append(
                    {
                        "uri": (base / rel).as_uri(),
                        "sha256": sha256_file(f),
                        "kind": f.suffix.lstrip("."),
                    }
                )
        elif p.is_file():
            records.append(
                {
                    "uri": (base / p.name).as_uri(),
                    "sha256": sha256_file(p),
                    "kind": p.suffix.lstrip("."),
                }
            )
    return records
