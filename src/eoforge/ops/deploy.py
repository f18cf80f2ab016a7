"""Apply ``eoforge/orchestration/deployments/prefect.yaml`` to a Prefect server: create the work
pools, register deployments.

Shells out to the ``prefect`` CLI (so eoforge's library never imports Prefect) with
``EOFORGE_HOME`` set to the folder the ``eoforge`` package is installed in (a checkout's ``src``
or a wheel's ``site-packages``): the deployments' entrypoints (``eoforge/orchestration/flows/
*.py``) are relative to it and their pull step uses it as working directory. (Not the package
folder itself: Prefect puts the working directory on ``sys.path``, where ``eoforge/io``,
``eoforge/config`` ... would shadow top-level modules.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from eoforge.errors import InputError, TransientError

__all__ = [
    "DEPLOYMENTS_DIR",
    "PACKAGE_DIR",
    "PREFECT_FILE",
    "apply_deployments",
    "ensure_work_pool",
]

#: The installed eoforge package (package data included), wherever it was installed.
PACKAGE_DIR = Path(str(files("eoforge")))
#: The folder holding the package: the deployments' working directory (EOFORGE_HOME).
INSTALL_ROOT = PACKAGE_DIR.parent
#: Deployment configuration shipped as package data.
DEPLOYMENTS_DIR = PACKAGE_DIR / "orchestration" / "deployments"
PREFECT_FILE = DEPLOYMENTS_DIR / "prefect.yaml"


def _prefect() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else (shutil.which("prefect") or "prefect")


def _run(args: Sequence[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(
        [_prefect(), "--no-prompt", *args],
        cwd=INSTALL_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        if "Connect" in tail or "connection" in tail.lower():
            raise TransientError(
                f"{what}: the Prefect API is unreachable ({tail.strip()[-300:]}); check PREFECT_API_URL."
            )
        raise InputError(f"{what} failed:\n{tail}")
    return proc.stdout


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("EOFORGE_HOME", str(INSTALL_ROOT))
    env.setdefault("EOFORGE_PYTHON", sys.executable)
    env["EOFORGE_RUNS"] = str(runs_root(env.get("EOFORGE_RUNS")))
    return env


def runs_root(value: str | None) -> Path:
    """Where deployments write their default run folders (``EOFORGE_RUNS``): absolute, and
    never inside the installed package (workers run in it; an upgrade would remove them).

    Raises:
        InputError: the folder is inside the package's install folder.
    """
    root = Path(value).expanduser() if value else Path.cwd() / "runs"
    root = root.resolve()
    home = INSTALL_ROOT.resolve()
    if root == home or home in root.parents:
        raise InputError(
            f"EOFORGE_RUNS '{root}' is inside the eoforge install folder '{home}', which package "
            "upgrades replace; set EOFORGE_RUNS to a folder of your own, or run `eoforge deploy` "
            "from your project folder."
        )
    return root


def ensure_work_pool(
    name: str, pool_type: str = "process", base_job_template: Path | None = None
) -> None:
    """Create (or update) a work pool."""
    args = ["work-pool", "create", name, "--type", pool_type, "--overwrite"]
    if base_job_template is not None:
        if not base_job_template.is_file():
            raise InputError(f"base job template '{base_job_template}' does not exist.")
        args += ["--base-job-template", str(base_job_template)]
    _run(args, _env(), f"creating work pool '{name}'")


def apply_deployments(
    gpu_pool_type: str = "process",
    prefect_file: Path = PREFECT_FILE,
    names: Sequence[str] = (),
) -> str:
    """Create the ``cpu`` and ``gpu`` pools and register every deployment of ``prefect_file``.

    Args:
        gpu_pool_type: ``process`` (local) or ``kubernetes`` (uses the shipped deployments/k8s/gpu-job-template.json).
        prefect_file: the deployments' configuration.
        names: deploy only these deployment names (default: all).
    """
    if not prefect_file.is_file():
        raise InputError(f"deployment file '{prefect_file}' does not exist.")
    ensure_work_pool("cpu", "process")
    template = DEPLOYMENTS_DIR / "k8s" / "gpu-job-template.json"
    ensure_work_pool("gpu", gpu_pool_type, template if gpu_pool_type == "kubernetes" else None)
    args = ["deploy", "--prefect-file", str(prefect_file)]
    args += [a for n in names for a in ("--name", n)] if names else ["--all"]
    return _run(args, _env(), f"deploying {prefect_file}")
