"""Tests of eoforge.compute.cluster and the Dask path of eoforge.runs.scenes on a real LocalCluster.

One module-scoped cluster of 2 worker processes (~4 s to start) serves every test here.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xarray as xr
from pydantic import ValidationError

from eoforge.compute.cluster import (
    DEFAULT_CHUNKS,
    DaskSpec,
    dask_client,
    load_tile_chunked,
    write_tile_zarr,
)
from eoforge.cube.build import load_tile
from eoforge.errors import InputError, TransientError
from eoforge.runs.scenes import (
    ingest_batch,
    open_scene,
    plan_scenes,
    run_on_dask,
    run_serial,
    scene_store,
)
from eoforge.stac.items import item_tile

if TYPE_CHECKING:
    from distributed import Client

VARIABLES = ["blue", "green", "red", "nir", "scl"]


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with dask_client(DaskSpec(n_workers=2, threads_per_worker=1)) as c:
        yield c


@pytest.fixture(scope="module")
def twl_items(real_items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [it for it in real_items if item_tile(it) == "33TWL"]


def test_spec_defaults_and_cluster_kwargs() -> None:
    spec = DaskSpec()
    assert spec.scheduler_address is None
    assert spec.chunks == DEFAULT_CHUNKS == {"time": 1, "y": 2048, "x": 2048}
    kwargs = spec.local_cluster_kwargs()
    assert kwargs["n_workers"] == 2 and kwargs["processes"] is True
    assert kwargs["dashboard_address"] is None
    assert "memory_limit" not in kwargs
    assert DaskSpec(memory_limit="2GiB").local_cluster_kwargs()["memory_limit"] == "2GiB"
    # each worker process sizes its thread pools to its share (eoforge.compute.cpus)
    assert kwargs["env"] == {"EOFORGE_CPUS": "1"}
    assert DaskSpec(threads_per_worker=3).local_cluster_kwargs()["env"] == {"EOFORGE_CPUS": "3"}
    assert "env" not in DaskSpec(processes=False).local_cluster_kwargs()


@pytest.mark.parametrize(
    "bad",
    [{"chunks": {"band": 1}}, {"chunks": {"x": 0}}, {"n_workers": 0}, {"unknown": 1}],
)
def test_spec_rejects_bad_fields(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DaskSpec(**bad)


def test_cluster_has_two_worker_processes(client: Client) -> None:
    info = client.scheduler_info()
    assert len(info["workers"]) == 2
    pids = client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2


def test_chunked_load_on_cluster_equals_plain_load(
    client: Client, twl_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    chunks = {"time": 1, "y": 256, "x": 256}
    ds = load_tile_chunked(twl_items, VARIABLES, chunks)
    assert ds["blue"].chunks == ((1,) * 5, (256, 256), (256, 256))
    out = write_tile_zarr(ds, tmp_path / "tile.zarr", client)
    got = xr.open_zarr(out, consolidated=False)
    want = load_tile(twl_items, VARIABLES).compute(scheduler="synchronous")
    assert got.attrs["item_ids"] == want.attrs["item_ids"]
    assert got.attrs["crs"] == want.attrs["crs"] == "EPSG:32633"
    assert got["blue"].encoding["chunks"] == (1, 256, 256)
    for v in VARIABLES:
        np.testing.assert_array_equal(got[v].values, want[v].values)
        assert got[v].dtype == want[v].dtype
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


def test_missing_raster_on_cluster_is_input_error(
    client: Client, real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    item = dict(real_items[0])
    item["assets"] = dict(
        item["assets"], blue={**item["assets"]["blue"], "href": "file:///x/B02.tif"}
    )
    ds = load_tile_chunked([item], ["blue"])
    with pytest.raises(InputError, match="does not exist"):
        write_tile_zarr(ds, tmp_path / "t.zarr", client)
    assert list(tmp_path.iterdir()) == []


def test_scene_fanout_on_dask_equals_plain_loop(
    client: Client, real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    items = real_items[:4]
    plain = plan_scenes(items, tmp_path / "plain", scenes_per_task=1)
    dask_plan = plan_scenes(items, tmp_path / "dask", scenes_per_task=2)
    assert len(dask_plan.batches) == 2
    serial = run_serial(
        functools.partial(ingest_batch, variables=VARIABLES, out=str(plain.out)), plain.batches
    )
    fn = functools.partial(ingest_batch, variables=VARIABLES, out=str(dask_plan.out))
    spread = run_on_dask(client, fn, dask_plan.batches)
    assert [r["item_id"] for r in spread] == [r["item_id"] for r in serial]
    for it in items:
        a = open_scene(plain.out, it["id"])
        b = open_scene(dask_plan.out, it["id"])
        for v in VARIABLES:
            np.testing.assert_array_equal(a[v].values, b[v].values)
    again = run_on_dask(client, fn, dask_plan.batches)  # same inputs: kept, not rewritten
    assert all(r["skipped"] for r in again)


def test_missing_raster_fails_the_fanout_with_input_error(
    client: Client, real_items: list[dict[str, Any]], tmp_path: Path
) -> None:
    item = dict(real_items[0], id="broken")
    item["assets"] = dict(item["assets"])
    item["assets"]["blue"] = dict(item["assets"]["blue"], href="file:///nonexistent/B02.tif")
    plan = plan_scenes([item], tmp_path)
    fn = functools.partial(ingest_batch, variables=VARIABLES, out=str(tmp_path))
    with pytest.raises(InputError, match=r"B02\.tif"):  # its own type, through the cluster
        run_on_dask(client, fn, plan.batches)
    assert not scene_store(tmp_path, "broken").exists()


def test_unreachable_scheduler_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = DaskSpec(scheduler_address=f"tcp://127.0.0.1:{port}", connect_timeout_s=1)
    with pytest.raises(TransientError, match="unreachable"), dask_client(spec):
        pass
