"""Tests of eoforge.ops.deploy: where deployments put their default run folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from eoforge.errors import InputError
from eoforge.ops.deploy import INSTALL_ROOT, runs_root


def test_runs_default_to_the_folder_deploy_runs_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert runs_root(None) == tmp_path.resolve() / "runs"
    assert runs_root("mine") == tmp_path.resolve() / "mine"  # absolute when deployed
    assert runs_root(str(tmp_path / "abs")) == tmp_path.resolve() / "abs"


def test_runs_inside_the_installed_package_are_refused() -> None:
    with pytest.raises(InputError, match="inside the eoforge install folder"):
        runs_root(str(INSTALL_ROOT / "runs"))
    with pytest.raises(InputError, match="EOFORGE_RUNS"):
        runs_root(str(INSTALL_ROOT))
