"""Faults in every network dependency: results are byte-identical, or the run fails cleanly.

A :class:`FaultProxy` sits in front of each service on loopback: the rustac STAC API, a Range
file server holding the bundled COGs (what GDAL reads over http), and ``moto_server`` (S3, read
and written by s3fs). Each proxy keeps one port for the whole module, so a clean run and a
faulted run see the very same hrefs. With ``FAULT_RATE`` of all requests failing (5xx, 429 with
Retry-After, timeouts, resets, truncated bodies) search, ingest, chipping and inference must
finish with outputs byte-identical to a clean run; with every request failing they must stop
with a clear error after bounded retries, and publish nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from eoforge_fault_proxy import (  # type: ignore[import-not-found]
    ALL_FAULTS,
    FaultProxy,
    FaultSchedule,
    RangeFileServer,
)
from eoforge_test_helpers import write_tiny_cube  # type: ignore[import-not-found]
from onnx import TensorProto, helper, numpy_helper

from eoforge.config import BUNDLED_CATALOG, ChipSpec, InferSpec, LabelSpec, StacSpec
from eoforge.errors import TransientError
from eoforge.io.atomic import sha256_file, sha256_tree
from eoforge.io.hrefs import HrefPolicy
from eoforge.stac.search import search_items
from eoforge.stac.server import LocalStacServer, prepare_served_catalog

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

FAULT_RATE = float(os.environ.get("EOFORGE_FAULT_RATE", "0.3"))
BANDS = ("blue", "green", "red", "nir")
VARIABLES = [*BANDS, "scl"]
BUCKET = "eoforge-faults"
# Short timeouts and delays keep the injected timeouts and retries cheap.
FAST_RETRIES = {
    "GDAL_HTTP_TIMEOUT": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "1",
    "GDAL_HTTP_LOW_SPEED_TIME": "1",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "0.01",
    "EOFORGE_READ_ATTEMPTS": "10",
    "EOFORGE_READ_BACKOFF_S": "0.01",
}
SEARCH = StacSpec(max_retries=8, backoff_factor=0.01, timeout_s=1)
REPORT: dict[str, dict[str, Any]] = {}


@dataclass
class Net:
    cog: FaultProxy
    stac: FaultProxy
    s3: FaultProxy
    moto_url: str

    def set_rate(self, rate: float) -> None:
        for proxy in (self.cog, self.stac, self.s3):
            proxy.schedule.set_rate(rate)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {"requests": p.schedule.requests, **dict(p.schedule.counts)}
            for name, p in (("stac", self.stac), ("cog", self.cog), ("s3", self.s3))
        }

    def reset_counts(self) -> None:
        for p in (self.cog, self.stac, self.s3):
            p.schedule.counts.clear()
            p.schedule.requests = 0

    def s3_options(self, attempts: int, via_proxy: bool = True) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "skip_instance_cache": True,
            "client_kwargs": {
                "endpoint_url": self.s3.url if via_proxy else self.moto_url,
                "region_name": "us-east-1",
            },
            "config_kwargs": {
                "retries": {"max_attempts": attempts, "mode": "standard"},
                "connect_timeout": 0.5,
                "read_timeout": 0.5,
            },
        }


@pytest.fixture(scope="module")
def net(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    mp = pytest.MonkeyPatch()
    for k, v in FAST_RETRIES.items():
        mp.setenv(k, v)
    from botocore.retries.standard import ExponentialBackoff

    # botocore waits rand(0, 1) x 2^n s before retry n: scale it down, as GDAL's delay above
    original_delay = ExponentialBackoff.delay_amount
    mp.setattr(
        ExponentialBackoff,
        "delay_amount",
        lambda self, context: 0.02 * original_delay(self, context),
    )
    work = tmp_path_factory.mktemp("faults")
    with RangeFileServer(BUNDLED_CATALOG) as files:
        cog = FaultProxy(files.url, FaultSchedule(0.0, seed=1), hold_s=4).start()
        policy = HrefPolicy(roots=(BUNDLED_CATALOG,), hosts=("127.0.0.1",), resolve=False)
        served = prepare_served_catalog(BUNDLED_CATALOG, work / "served", policy=policy)
        for path in served[1:]:  # every asset behind the faulty COG proxy
            item = json.loads(path.read_text())
            for asset in item["assets"].values():
                rel = Path(asset["href"].removeprefix("file://")).relative_to(BUNDLED_CATALOG)
                asset["href"] = f"{cog.url}/{rel.as_posix()}"
            path.write_text(json.dumps(item))
        with LocalStacServer(served) as api:
            stac = FaultProxy(
                api.url, FaultSchedule(0.0, seed=2), hold_s=4, retry_after="0", rewrite_links=True
            ).start()
            # S3 signals throttling with 503 SlowDown; botocore does not retry a bare 429 on HEAD
            s3_kinds = tuple(k for k in ALL_FAULTS if k != "429")
            s3 = FaultProxy(moto_server, FaultSchedule(0.0, s3_kinds, seed=3), hold_s=4).start()
            import s3fs

            s3fs.S3FileSystem(
                key="testing",
                secret="testing",
                client_kwargs={"endpoint_url": moto_server, "region_name": "us-east-1"},
            ).call_s3("create_bucket", Bucket=BUCKET)
            yield Net(cog=cog, stac=stac, s3=s3, moto_url=moto_server)
            for p in (stac, s3, cog):
                p.stop()
    mp.undo()
    if REPORT:
        print("\nfault injection report:\n" + json.dumps(REPORT, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def clean(net: Net, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Search and cube of a fault-free run."""
    from eoforge.cube.build import write_cube

    net.set_rate(0.0)
    items = search_items(SEARCH, net.stac.url)
    cube = tmp_path_factory.mktemp("clean") / "cube.zarr"
    write_cube(items, VARIABLES, cube)
    return {"items": items, "cube": cube}


def _record(net: Net, name: str, seconds: float, outcome: str) -> None:
    REPORT[name] = {"seconds": round(seconds, 1), "outcome": outcome, **net.counts()}


def test_search_and_ingest_under_faults_are_byte_identical(
    net: Net, clean: dict[str, Any], tmp_path: Path
) -> None:
    from eoforge.cube.build import write_cube

    net.reset_counts()
    net.set_rate(FAULT_RATE)
    t0 = time.perf_counter()
    items = search_items(SEARCH, net.stac.url)
    assert items == clean["items"]
    write_cube(items, VARIABLES, tmp_path / "cube.zarr")
    _record(net, f"ingest@{FAULT_RATE}", time.perf_counter() - t0, "identical")
    assert sha256_tree(tmp_path / "cube.zarr") == sha256_tree(clean["cube"])
    faults = sum(v for k, v in net.counts()["cog"].items() if k not in {"ok", "requests"})
    assert faults > 10, net.counts()  # the faults really happened


def _download(net: Net, uri: str, dest: Path) -> Path:
    import s3fs

    fs = s3fs.S3FileSystem(**net.s3_options(2, via_proxy=False))
    fs.get(uri.removeprefix("s3://"), str(dest), recursive=True)
    return dest


def _build_remote_chips(net: Net, rate: float, attempts: int) -> tuple[str, dict[str, Any]]:
    from eoforge.chips.cut import build_chips

    options = net.s3_options(attempts)
    net.set_rate(rate)
    try:
        build_chips(
            f"s3://{BUCKET}/cube.zarr",
            f"s3://{BUCKET}/run/chips.zarr",
            ChipSpec(size=16, stride=16, train_tiles=("AAA",), test_tiles=("BBB",)),
            LabelSpec(),
            BANDS,
            storage_options=options,
        )
    finally:
        net.set_rate(0.0)
    return f"s3://{BUCKET}/run/chips.zarr", options


def test_chips_over_s3_under_faults_are_byte_identical(net: Net, tmp_path: Path) -> None:
    import s3fs

    direct = s3fs.S3FileSystem(**net.s3_options(2, via_proxy=False))
    direct.put(str(write_tiny_cube(tmp_path / "cube.zarr")), f"{BUCKET}/cube.zarr", recursive=True)
    uri, _ = _build_remote_chips(net, 0.0, 10)
    ref = _download(net, uri, tmp_path / "clean" / "chips.zarr")
    ref_index = sha256_file(
        _download(net, f"s3://{BUCKET}/run/chips-index.parquet", tmp_path / "ci")
    )
    direct.rm(f"{BUCKET}/run", recursive=True)
    net.reset_counts()
    t0 = time.perf_counter()
    uri, _ = _build_remote_chips(net, FAULT_RATE, 10)
    _record(net, f"chips@{FAULT_RATE}", time.perf_counter() - t0, "identical")
    got = _download(net, uri, tmp_path / "faulty" / "chips.zarr")
    assert sha256_tree(got) == sha256_tree(ref)
    index = _download(net, f"s3://{BUCKET}/run/chips-index.parquet", tmp_path / "fi")
    assert sha256_file(index) == ref_index
    assert not [p for p in direct.ls(f"{BUCKET}/run") if ".staging-" in p]
    s3_faults = sum(v for k, v in net.counts()["s3"].items() if k not in {"ok", "requests"})
    assert s3_faults > 10, net.counts()


def _conv_model(path: Path, channels: int = 4, classes: int = 5) -> Path:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(classes, channels, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["image", "scale"], ["x"]),
            helper.make_node("Conv", ["x", "w", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
            numpy_helper.from_array(np.array(1e4, np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _infer(items: list[dict[str, Any]], model: Path, out: Path) -> list[Path]:
    from eoforge.runs.scenes import infer_scene

    files = []
    for item in items:
        r = infer_scene(
            item,
            model,
            out,
            bands=BANDS,
            classes=["vegetation", "bare", "water", "cloud", "shadow"],
            spec=InferSpec(window=256, overlap=32, batch_size=4, threads=1),
            scheduler="synchronous",
        )
        files += [Path(r["cog"]), Path(r["item"])]
    return files


def test_inference_under_faults_is_byte_identical(
    net: Net, clean: dict[str, Any], tmp_path: Path
) -> None:
    model = _conv_model(tmp_path / "model.onnx")
    scenes = [it for it in clean["items"] if "33TWM" in it["id"]][:3]
    net.set_rate(0.0)
    ref = _infer(scenes, model, tmp_path / "clean")
    net.reset_counts()
    net.set_rate(FAULT_RATE)
    t0 = time.perf_counter()
    try:
        got = _infer(scenes, model, tmp_path / "faulty")
    finally:
        net.set_rate(0.0)
    _record(net, f"infer@{FAULT_RATE}", time.perf_counter() - t0, "identical")
    assert [sha256_file(p) for p in got] == [sha256_file(p) for p in ref]


def _no_staging(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".staging-*")]


def test_total_outage_fails_clearly_after_bounded_retries(
    net: Net, clean: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every request failing, each stage stops with a clear error and publishes nothing."""
    from eoforge.cube.build import write_cube

    monkeypatch.setenv("EOFORGE_READ_ATTEMPTS", "3")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "2")
    outcomes: dict[str, str] = {}
    import s3fs

    direct = s3fs.S3FileSystem(**net.s3_options(2, via_proxy=False))
    # what earlier tests published in the shared bucket is not this run's doing
    before = set(direct.find(f"{BUCKET}/run"))
    for path in before:
        if "chips" in path:
            direct.rm(path)
    net.reset_counts()
    net.set_rate(1.0)
    try:
        t0 = time.perf_counter()
        with pytest.raises(TransientError) as search_err:
            search_items(StacSpec(max_retries=2, backoff_factor=0.01, timeout_s=2), net.stac.url)
        assert net.stac.url.split("//")[1] in str(search_err.value)
        outcomes["search"] = f"{time.perf_counter() - t0:.1f} s: {str(search_err.value)[:160]}"

        t0 = time.perf_counter()
        with pytest.raises(TransientError) as ingest_err:
            write_cube(clean["items"], VARIABLES, tmp_path / "cube.zarr")
        assert "failed 3 times" in str(ingest_err.value)
        assert clean["items"][0]["id"] in str(ingest_err.value)
        assert not (tmp_path / "cube.zarr").exists()
        outcomes["ingest"] = f"{time.perf_counter() - t0:.1f} s: {str(ingest_err.value)[:160]}"

        t0 = time.perf_counter()
        with pytest.raises(TransientError) as chips_err:
            _build_remote_chips(net, 1.0, 2)
        assert f"s3://{BUCKET}/cube.zarr" in str(chips_err.value)
        outcomes["chips"] = (
            f"{time.perf_counter() - t0:.1f} s: {type(chips_err.value).__name__}: "
            f"{str(chips_err.value)[:160]}"
        )
        net.set_rate(1.0)

        t0 = time.perf_counter()
        model = _conv_model(tmp_path / "model.onnx")
        with pytest.raises(TransientError) as infer_err:
            _infer(clean["items"][:1], model, tmp_path / "pred")
        assert clean["items"][0]["id"] in str(infer_err.value)
        outcomes["infer"] = f"{time.perf_counter() - t0:.1f} s: {str(infer_err.value)[:160]}"
        assert (
            not list((tmp_path / "pred").rglob("*.tif")) if (tmp_path / "pred").exists() else True
        )
    finally:
        net.set_rate(0.0)
    direct.invalidate_cache()
    leftovers = [p for p in direct.find(f"{BUCKET}/run") if "chips" in p]
    assert not [p for p in leftovers if p.endswith("chips.zarr/zarr.json")], leftovers
    assert _no_staging(tmp_path) == []
    REPORT["outage@1.0"] = {"outcomes": outcomes, **net.counts()}
    shutil.rmtree(tmp_path, ignore_errors=True)
