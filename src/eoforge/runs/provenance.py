"""Provenance: what a run used and produced, enough to reproduce and audit it.

Everything recorded passes through :func:`eoforge.io.redact.redact_obj` first: signed asset URLs
lose their query strings and secret-looking environment values are masked, so a provenance
record can be shared without leaking credentials.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from eoforge.io.atomic import sha256_file, sha256_tree, write_json_atomic
from eoforge.io.redact import redact_obj, redact_url
from eoforge.io.stores import is_remote

__all__ = [
    "git_revision",
    "output_records",
    "output_uri",
    "package_versions",
    "stac_item_records",
    "write_provenance",
]

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
    "openvino",
    "scikit-learn",
    "numpy",
    "rustac",
)


def _checkout() -> Path | None:
    """The git checkout eoforge runs from (``src/eoforge`` in a repository), None for an
    installed wheel (whose site-packages may sit inside some other repository)."""
    root = Path(str(files("eoforge"))).parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / ".git").exists() else None


#: The eoforge checkout (None when eoforge is installed from a wheel).
REPO_ROOT = _checkout()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results, plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(repo: Path | None = REPO_ROOT) -> dict[str, Any]:
    """The git commit of the eoforge checkout and whether it had uncommitted changes (both None
    for an installed wheel: its version is in ``packages``)."""
    if repo is None:
        return {"commit": None, "dirty": None}
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


def output_uri(rel: Path, final_dir: Path | str) -> str:
    """The URI of ``rel`` (a path inside a run folder) once the run is at ``final_dir``: a
    folder, or an object-store URI such as ``s3://b/run``."""
    if is_remote(final_dir):
        return f"{str(final_dir).rstrip('/')}/{rel.as_posix()}"
    return (Path(final_dir).resolve() / rel).as_uri()


def output_records(run_dir: Path, final_dir: Path | str | None = None) -> list[dict[str, str]]:
    """One record (uri, sha256, kind) per output of a run directory.

    Zarr stores are hashed as a whole tree; every other file on its own. URIs name the
    final location (``final_dir``, a folder or an object-store URI, :func:`output_uri`) when
    the run is still being written in a staging folder.
    """

    def uri(rel: Path) -> str:
        return output_uri(rel, final_dir or run_dir)

    records: list[dict[str, str]] = []
    for p in sorted(run_dir.iterdir()):
        if p.name in {"provenance.json"}:
            continue
        if p.is_dir() and p.suffix == ".zarr":
            records.append({"uri": uri(Path(p.name)), "sha256": sha256_tree(p), "kind": "zarr"})
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(run_dir)
                kind = f.suffix.lstrip(".")
                records.append({"uri": uri(rel), "sha256": sha256_file(f), "kind": kind})
        elif p.is_file():
            kind = p.suffix.lstrip(".")
            records.append({"uri": uri(Path(p.name)), "sha256": sha256_file(p), "kind": kind})
    return records


def stac_item_records(
    items: Iterable[Mapping[str, Any]], assets: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One provenance record per STAC item: id, collection, ``updated``, self and asset hrefs.

    Hrefs are recorded without query strings (signed URLs carry credentials that expire anyway).

    Args:
        items: STAC items as dicts.
        assets: asset keys to record (default: every asset).
    """
    records: list[dict[str, Any]] = []
    for it in items:
        self_href = next(
            (str(lk["href"]) for lk in it.get("links", []) if lk.get("rel") == "self"), None
        )
        records.append(
            {
                "id": it.get("id"),
                "collection": it.get("collection"),
                "updated": it.get("properties", {}).get("updated"),
                "self_href": redact_url(self_href) if self_href else None,
                "assets": {
                    k: redact_url(str(a.get("href", "")))
                    for k, a in it.get("assets", {}).items()
                    if assets is None or k in assets
                },
            }
        )
    return records


def write_provenance(path: Path, record: Mapping[str, Any]) -> str:
    """Write a provenance record as deterministic JSON, atomically, with every secret redacted.

    Returns:
        The sha256 of the written file.
    """
    plain = json.loads(json.dumps(dict(record), default=str))  # Paths etc. become strings first
    return write_json_atomic(Path(path), redact_obj(plain))
