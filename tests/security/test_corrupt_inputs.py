"""Files that read wrong are bad input, and unusual paths read right (issue 15, classes 5, 7).

A truncated or garbage local COG is an :class:`InputError` naming the file (exit 2) at the
first read, not "storage or network is failing, retry later" (exit 4) after minutes of
retries; only what can recover on retry is transient. A catalog in a folder whose name has a
space (its hrefs percent-encoded, ``cat%20space``) is read like any other.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from eoforge.config import BUNDLED_CATALOG, StacSpec
from eoforge.cube.build import write_cube
from eoforge.errors import InputError
from eoforge.stac.search import search_items
from eoforge.testing import served_catalog

Cli = Callable[..., subprocess.CompletedProcess[str]]
VARIABLES = ["blue", "green", "red", "nir", "scl"]
ITEM = "S2B_33TWL_20230810_0_L2A"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"II*\x00" + b"\xde\xad\xbe\xef" * 4096)  # a TIFF magic, then nonsense


DAMAGE = {"truncated": truncate, "garbage": garbage}


@pytest.fixture()
def catalog_copy(tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        cat = tmp_path / name
        shutil.copytree(BUNDLED_CATALOG, cat)
        return cat

    return copy


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_local_cog_is_bad_input_through_the_cli(
    eoforge_cli: Cli, catalog_copy: Callable[[str], Path], tmp_path: Path, damage: str
) -> None:
    cat = catalog_copy("catalog")
    bad = cat / ITEM / "B02.tif"
    DAMAGE[damage](bad)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"stac:\n  catalog_dir: {cat}\n")
    t0 = time.monotonic()
    proc = eoforge_cli(
        "run", "--config", str(cfg), "--plain",
        "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
        timeout=300,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = " ".join(proc.stderr.split())
    assert f"'{bad}'" in text and "damaged" in text and "retry later" not in text, text
    assert "Traceback" not in proc.stderr
    assert took < 60, f"{took:.0f} s: retried a file that cannot recover?"
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "store").rglob("*.zarr")), "a cube was published"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_local_cog_is_not_retried(
    catalog_copy: Callable[[str], Path], tmp_path: Path, damage: str
) -> None:
    cat = catalog_copy("catalog")
    DAMAGE[damage](cat / ITEM / "B03.tif")
    with served_catalog(cat, tmp_path / "served") as api:
        items = [
            it for it in search_items(StacSpec(catalog_dir=cat), api.url) if "33TWL" in it["id"]
        ]
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"B03\.tif") as info:
        write_cube(items[:2], VARIABLES, tmp_path / "cube.zarr")
    assert "green" in str(info.value)
    assert time.monotonic() - t0 < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog", "served"]


def test_catalog_folder_with_a_space_is_read(
    catalog_copy: Callable[[str], Path], tmp_path: Path
) -> None:
    cat = catalog_copy("cat space")
    with served_catalog(cat, tmp_path / "served") as api:
        items = search_items(StacSpec(catalog_dir=cat), api.url)
    hrefs = [it["assets"]["blue"]["href"] for it in items]
    assert all("cat%20space" in h for h in hrefs), hrefs[:1]  # what the issue met
    twl = [it for it in items if "33TWL" in it["id"]][:2]
    info = write_cube(twl, VARIABLES, tmp_path / "cube 1.zarr")
    assert info.tiles == {"33TWL": [it["id"] for it in twl]}


FAST_TRAINING = (
    "train:\n  max_epochs: 1\n  max_seconds: 10\n  rf_n_estimators: 5\n  rf_train_pixels: 5000\n"
)


@pytest.mark.slow
@pytest.mark.e2e
def test_damaged_stored_model_is_quarantined_and_rebuilt(eoforge_cli: Cli, tmp_path: Path) -> None:
    """Issue 15, class 6: a garbage ``model.onnx`` in the store was reused on every rerun, and a
    pickle written over ``model.safetensors`` was published as the run's model."""
    import hashlib
    import json

    cfg = tmp_path / "run.yaml"
    cfg.write_text(FAST_TRAINING)
    store = tmp_path / "store"

    def run(name: str) -> Path:
        out = tmp_path / name
        proc = eoforge_cli(
            "run", "--config", str(cfg), "--plain", "--out", str(out), "--store", str(store),
            timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out

    def published_model_is_whole(out: Path) -> None:
        item = json.loads((out / "model" / "model-item.json").read_text())
        for asset in item["assets"].values():
            if "file:checksum" in asset:
                data = (out / "model" / asset["href"].removeprefix("./")).read_bytes()
                assert hashlib.sha256(data).hexdigest() == asset["file:checksum"][4:]

    published_model_is_whole(run("first"))
    (stored_model,) = (store / "models").iterdir()
    damages = {
        "model.onnx": b"\x08\x07 garbage, not a protobuf",
        "model.safetensors": b"\x80\x04\x95 a pickle in disguise",
    }
    for n, (name, data) in enumerate(damages.items()):
        (stored_model / name).write_bytes(data)
        out = run(f"after-{n}")
        published_model_is_whole(out)
        assert (stored_model / name).read_bytes() != data  # rebuilt
        quarantined = sorted(stored_model.parent.glob(f".quarantine-{stored_model.name}.*"))
        assert len(quarantined) == n + 1 and (quarantined[-1] / name).read_bytes() == data
