"""Shared fixtures: the bundled real sample served by a real rustac STAC API on loopback, and a
real ``moto_server``; shared helpers registered as importable modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import BUNDLED_CATALOG, RunSpec, StacSpec
from eoforge.stac.search import search_items
from eoforge.testing import served_catalog
from eoforge.testing.s3 import moto_server_exe, s3_server


def _register(name: str, path: Path, package: bool = False) -> None:
    """Import ``path`` as the module ``name`` (once): with ``--import-mode=importlib`` and
    ``.venv/bin/pytest`` neither ``tests/`` nor the repository root is on ``sys.path``."""
    if name in sys.modules or (package and importlib.util.find_spec(name) is not None):
        return
    spec = importlib.util.spec_from_file_location(
        name,
        path / "__init__.py" if package else path,
        submodule_search_locations=[str(path)] if package else None,
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


# ``from eoforge_test_helpers import ...``: tests/_helpers.py
_register("eoforge_test_helpers", Path(__file__).with_name("_helpers.py"))


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """URL of a fresh real ``moto_server`` (S3) on loopback; it stops at module teardown."""
    if moto_server_exe() is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    with s3_server() as url:
        yield url


@pytest.fixture(scope="module")
def aws_env(moto_server: str) -> Iterator[dict[str, str]]:
    """``AWS_*`` variables that point every s3fs / botocore client of this process at the
    module's ``moto_server`` (dummy keys), as a user's environment would; restored after."""
    import s3fs

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_server,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # no client of another endpoint is reused
        yield env
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def bundled_catalog() -> Path:
    assert (BUNDLED_CATALOG / "collection.json").is_file(), "bundled sample missing"
    return BUNDLED_CATALOG


@pytest.fixture(scope="session")
def stac_api(bundled_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ``rustac serve`` over the bundled mini sample."""
    with served_catalog(bundled_catalog, tmp_path_factory.mktemp("served")) as server:
        yield server.url


@pytest.fixture(scope="session")
def real_items(stac_api: str) -> list[dict[str, Any]]:
    return search_items(StacSpec(), stac_api)


@pytest.fixture(scope="session")
def real_cube(real_items: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eoforge.cube.build import write_cube

    spec = RunSpec()
    out = tmp_path_factory.mktemp("cube") / "cube.zarr"
    write_cube(real_items, [*spec.stac.bands, spec.stac.label_asset], out)
    return out
