"""The scene fan-out flows on prefect-dask, against a real Prefect server and STAC API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from eoforge_test_helpers import asset_bands  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper

from eoforge.compute.cluster import DaskSpec, dask_client
from eoforge.config import InferSpec, StacSpec
from eoforge.inference.predict import predict_scene
from eoforge.inference.session import open_session
from eoforge.orchestration.flows.scale import run_scale_infer, run_scale_ingest, task_runner_for
from eoforge.runs.scenes import open_scene
from eoforge.stac.search import search_items
from eoforge.stac.server import LocalStacServer
from eoforge.stac.synthetic import write_synthetic_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

N_SCENES = 6


@pytest.fixture(scope="module")
def synthetic_api(bundled_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cat = write_synthetic_catalog(bundled_catalog, N_SCENES, tmp_path_factory.mktemp("syn"))
    with LocalStacServer(cat.files) as server:
        yield server.url


def _task_runs(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=100,
            )

    return asyncio.run(read())


def test_task_runner_follows_the_spec() -> None:
    local = task_runner_for(DaskSpec(n_workers=3))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    remote = task_runner_for(DaskSpec(scheduler_address="tcp://10.0.0.1:8786"))
    assert remote.address == "tcp://10.0.0.1:8786"


def test_ingest_flow_fans_out_scene_batches_on_local_cluster(
    prefect_harness: None, synthetic_api: str, tmp_path: Path
) -> None:
    spec = DaskSpec(n_workers=2, scenes_per_task=2)
    stac = StacSpec(datetime=None)
    summary = run_scale_ingest(stac, synthetic_api, str(tmp_path), spec)
    assert summary["scenes"] == N_SCENES and summary["tasks"] == 3
    ids = [r["item_id"] for r in summary["results"]]
    assert len(set(ids)) == N_SCENES
    for item_id in ids:
        ds = open_scene(tmp_path, item_id)
        assert ds["blue"].shape == (1, 512, 512)
        assert int(np.asarray(ds["scl"].max())) > 0
    runs = _task_runs(summary["flow_run_id"])
    names = sorted(r.name.rsplit("-", 1)[0] for r in runs)
    assert names == ["ingest-scenes"] * 3 + ["plan-scenes"]
    assert all(r.state.is_completed() for r in runs)


def _model(path: Path) -> Path:
    weight = np.eye(5, 4, dtype=np.float32).reshape(5, 4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5, "H", "W"])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_infer_flow_runs_on_a_scheduler_address(
    prefect_harness: None, synthetic_api: str, tmp_path: Path
) -> None:
    from distributed import get_task_stream

    model = _model(tmp_path / "model.onnx")
    stac = StacSpec(datetime=None, max_items=3)
    infer = InferSpec(window=256, overlap=32, threads=1)
    with dask_client(DaskSpec(n_workers=1)) as client:
        address = str(client.scheduler.address)  # type: ignore[union-attr]
        # the scheduler's own record of the tasks it ran while the flow was running
        with get_task_stream(client) as stream:
            summary = run_scale_infer(
                stac,
                synthetic_api,
                str(model),
                str(tmp_path),
                ["vegetation", "bare", "water", "cloud", "shadow"],
                infer,
                DaskSpec(scheduler_address=address, scenes_per_task=3),
            )
    assert summary["scenes"] == 3 and summary["tasks"] == 1
    ran = [str(t["key"]) for t in stream.data]
    # each scene batch ran on this scheduler, not on a cluster of the flow's own
    assert len([k for k in ran if k.startswith("infer_scenes_task-")]) == summary["tasks"], ran
    items = {it["id"]: it for it in search_items(stac, synthetic_api)}
    session = open_session(model, threads=1)
    assert sorted(r["item_id"] for r in summary["results"]) == sorted(items)
    for r in summary["results"]:
        assert Path(r["item"]).is_file()
        with rasterio.open(r["cog"]) as src:
            pred = src.read(1)
        # the flow's class map is the model's on the scene's own bands
        expected = predict_scene(session, asset_bands(items[r["item_id"]], stac.bands), infer)
        np.testing.assert_array_equal(pred, expected)
        assert len(np.unique(pred)) >= 2
