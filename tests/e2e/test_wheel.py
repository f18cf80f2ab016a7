"""The install a user gets: build the wheel, install it into a fresh virtualenv outside the
checkout, and run ``eoforge demo`` from another folder (the contracts, deployments and bundled
sample must come with the wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(3600)]


def _check(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 1800
) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        cwd=dist,
    )
    (found,) = dist.glob("eoforge-*.whl")
    return found


def test_wheel_carries_its_data_and_only_the_eoforge_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"eoforge"}, tops  # no top-level flows/ or tasks/ to collide with
    for needed in (
        "eoforge/contracts/definitions/items.yaml",
        "eoforge/contracts/definitions/chip_index.yaml",
        "eoforge/orchestration/deployments/prefect.yaml",
        "eoforge/orchestration/deployments/k8s/gpu-job-template.json",
        "eoforge/orchestration/flows/pipeline.py",
        "eoforge/orchestration/tasks/stages.py",
        "eoforge/stac/sample/s2-l2a-mini/collection.json",
        "eoforge/py.typed",
    ):
        assert needed in names, needed
    assert sum(n.endswith(".tif") for n in names if "/sample/" in n) == 50


def test_demo_from_a_fresh_virtualenv_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = env_dir / "bin" / "python"
    # The CPU torch wheel first: an unpinned resolve would pull gigabytes of CUDA packages.
    # --no-compile: pip byte-compiles every installed module (about 50 s of this test on two
    # cores, against about 15 s for compiling, at import, the modules the demo uses); what is
    # tested, the wheel and its install, is the same.
    pip = [str(py), "-m", "pip", "install", "--quiet", "--no-compile"]
    _check([*pip, "torch==2.13.0"], cwd=tmp_path)
    _check(
        [
            *pip,
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "EOFORGE_STORE": str(tmp_path / "store"),
        "MLFLOW_TRACKING_URI": "",
        "PYTHONUNBUFFERED": "1",
    }
    where = _check(
        [str(py), "-c", "import eoforge, sys; print(eoforge.__file__)"], cwd=elsewhere, env=env
    )
    assert str(env_dir) in where and str(ROOT) not in where
    eoforge = str(env_dir / "bin" / "eoforge")
    said = _check(
        [eoforge, "demo", "--plain", "--train-seconds", "10", "--out", "demo"],
        cwd=elsewhere,
        env=env,
    )
    out = elsewhere / "demo"
    assert f"report: {out / 'report.html'}" in said
    prov = json.loads((out / "provenance.json").read_text())
    assert all(c["success"] for c in prov["contracts"].values())
    assert str(env_dir) in prov["contracts"]["items"]["contract"]  # the wheel's own contracts
    assert prov["parameters"]["stac"]["catalog_dir"] == "bundled:s2-l2a-mini"
    assert prov["git"] == {"commit": None, "dirty": None}  # no checkout to describe
    assert len(list((out / "predictions").glob("*.tif"))) == 5
