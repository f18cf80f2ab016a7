"""The loopback servers of ``tests/faults/proxy.py``, importable as ``eoforge_fault_proxy``, and
the ``eoforge`` command line as a user runs it (:func:`eoforge_cli`)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

if "eoforge_fault_proxy" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "eoforge_fault_proxy", Path(__file__).parents[1] / "faults" / "proxy.py"
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["eoforge_fault_proxy"] = _module
    _spec.loader.exec_module(_module)


@pytest.fixture()
def eoforge_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``eoforge ARGS`` as a user would (a subprocess, its own Prefect home, wide console).

    ``prefix`` runs it under another command (e.g. ``unshare`` with a mount); ``timeout``
    bounds it so that a hang fails the test instead of stalling the suite.
    """

    def run(
        *args: str,
        cwd: Path | None = None,
        timeout: float = 300,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PREFECT_HOME=str(tmp_path / ".prefect-home"),
            COLUMNS="1000",  # rich would wrap long paths in the middle
            **(env or {}),
        )
        return subprocess.run(
            [*prefix, sys.executable, "-m", "eoforge.cli", *args],
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
        )

    return run
