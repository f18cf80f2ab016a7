"""Crash safety: SIGKILL a stage at random points; what is left never reads as valid, and a rerun
converges to the bytes of a clean run.

Each stage (ingest, chips, train + export, infer) runs in a forked child of this process (the
heavy imports happen once, before forking) and is killed with SIGKILL after a seeded random
delay between 0 and 1.1x its clean duration (the shorter of two clean runs). After each kill:

1. the stage's published product is either absent or byte-identical to the clean run's (the
   kill never leaves a torn product at the published path; a cube also passes its manifest
   check, a model loads);
2. a rerun of the stage (in a fresh child) succeeds and its product is byte-identical to the
   clean run's;
3. no staging leftover of the killed writer survives the rerun.

Training is made deterministic for this (one thread, fixed seed, one epoch), so its weights and
ONNX export can be compared byte for byte; ``model.json`` / ``training.json`` hold wall-clock
timings, so they are compared without those fields.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eoforge.config import RunSpec
from eoforge.io.atomic import sha256_file, sha256_tree

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TRIALS = int(os.environ.get("EOFORGE_KILL_TRIALS", "20"))
SEED = 20231121
SPEC = RunSpec.model_validate(
    {
        "train": {
            "max_epochs": 1,
            "max_seconds": 600,
            "threads": 1,
            "base_channels": 4,
            "batch_size": 32,
            "seed": 0,
        },
        "infer": {"window": 256, "overlap": 32, "batch_size": 4, "threads": 1},
    }
)
INFER_ITEMS = ["S2B_33TWM_20230810_0_L2A", "S2A_33TWM_20230815_0_L2A"]
_VOLATILE = {"seconds", "train_seconds", "steps_per_second", "history", "hyper_params"}
REPORT: dict[str, dict[str, Any]] = {}


_CHILD_TIMEOUT_S = 600.0


def _after_fork() -> None:
    """Make the forked child safe to compute in.

    The pytest process may already run dask's thread pool and torch's OpenMP threads; a forked
    child inherits their locks but not their threads, so it would wait forever on them. The
    child computes single-threaded instead (the clean reference runs the same way).
    """
    import dask

    dask.config.set(scheduler="synchronous")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _run_in_child(fn: Callable[[], Any], kill_after: float | None) -> tuple[str, float]:
    """Fork, run ``fn`` in the child; SIGKILL it after ``kill_after`` s (None: let it finish).

    Returns:
        ``("killed" | "finished", seconds)``.
    """
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            _after_fork()
            fn()
            code = 0
        finally:
            os._exit(code)
    if kill_after is None:
        while time.perf_counter() - t0 < _CHILD_TIMEOUT_S:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, "the stage failed in the child"
                return "finished", time.perf_counter() - t0
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"the stage did not finish in {_CHILD_TIMEOUT_S} s in the child")
    deadline = t0 + kill_after
    while time.perf_counter() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0, "the stage failed before the kill"
            return "finished", time.perf_counter() - t0
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "killed", time.perf_counter() - t0


def _json_without_timings(path: Path) -> Any:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in _VOLATILE}


def _fingerprint(kind: str, product: Path) -> Any:
    """What must be identical between a clean run and a rerun after a kill."""
    if kind in {"ingest"}:
        return sha256_tree(product)
    if kind == "chips":
        return sha256_tree(product), sha256_file(product.with_name(product.stem + "-index.parquet"))
    if kind == "train":
        return (
            sha256_file(product / "model.safetensors"),
            sha256_file(product / "model.onnx"),
            _json_without_timings(product / "model.json"),
            _json_without_timings(product / "training.json"),
        )
    # infer: every prediction COG and STAC item, and the model copied into the run
    return {
        p.relative_to(product).as_posix(): sha256_file(p)
        for p in sorted(product.rglob("*"))
        if p.is_file() and ".staging-" not in p.as_posix()
    }


def _valid(kind: str, product: Path) -> None:
    """Readers' own checks on a product found after a kill."""
    if kind == "ingest":
        from eoforge.cube.build import verify_cube

        verify_cube(product, deep=True)
    elif kind == "train":
        from eoforge.training.files import load_model

        load_model(product)


@pytest.fixture(scope="module")
def prepared(
    real_items: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Inputs of every stage, built once by clean runs (also the reference products)."""
    from eoforge.io.atomic import write_json_atomic
    from eoforge.runs.store import plan_keys

    root = tmp_path_factory.mktemp("kill")
    items_uri = root / "items.json"
    write_json_atomic(items_uri, {"type": "FeatureCollection", "features": real_items})
    keys = plan_keys(SPEC, real_items)
    store = str(root / "store")
    return {"root": root, "items_uri": str(items_uri), "keys": keys, "store": store}


def _stages(p: dict[str, Any]) -> dict[str, tuple[Callable[[], Any], Path]]:
    from eoforge.runs.stages_data import stage_chips, stage_ingest
    from eoforge.runs.stages_model import stage_infer, stage_train
    from eoforge.runs.store import stored

    store, keys = p["store"], p["keys"]
    cube = stored(store, "cube", keys["cube"])
    chips = stored(store, "chips", keys["chips"])
    model = stored(store, "model", keys["model"])
    run = Path(p["root"]) / "run"
    return {
        "ingest": (lambda: stage_ingest(SPEC, p["items_uri"], store, keys["cube"]), cube),
        "chips": (lambda: stage_chips(SPEC, str(cube), store, keys["chips"]), chips),
        "train": (lambda: stage_train(SPEC, str(chips), store, keys["model"]), model),
        "infer": (
            lambda: stage_infer(SPEC, str(model), str(cube), p["items_uri"], str(run), INFER_ITEMS),
            run,
        ),
    }


def _remove(kind: str, product: Path) -> None:
    import shutil

    if product.exists():
        shutil.rmtree(product)
    if kind == "chips":
        product.with_name(product.stem + "-index.parquet").unlink(missing_ok=True)


def _leftovers(kind: str, product: Path) -> list[str]:
    folder = product if kind == "infer" else product.parent
    return sorted(str(q) for q in folder.rglob(".staging-*"))


@pytest.mark.parametrize("kind", ["ingest", "chips", "train", "infer"])
def test_sigkill_at_random_points_then_rerun_converges(kind: str, prepared: dict[str, Any]) -> None:
    from eoforge.contracts import validation as contracts

    contracts._runtime()  # the GX context is built once here, before forking, not per child
    stages = _stages(prepared)
    for earlier in ["ingest", "chips", "train", "infer"]:  # inputs of this stage, clean
        fn, product = stages[earlier]
        if earlier == kind:
            break
        if not product.exists():
            _run_in_child(fn, None)
    fn, product = stages[kind]
    durations = []
    for _ in range(2):  # the shorter of two clean runs: kills land inside the real work
        _remove(kind, product)
        durations.append(_run_in_child(fn, None)[1])
    clean_s = min(durations)
    reference = _fingerprint(kind, product)
    _valid(kind, product)
    rng = random.Random(f"{SEED}-{kind}")
    tally = {"killed_absent": 0, "killed_present_identical": 0, "finished_before_kill": 0}
    delays = []
    for _trial in range(TRIALS):
        _remove(kind, product)
        delay = rng.uniform(0.0, 1.1 * clean_s)
        delays.append(round(delay, 2))
        outcome, _ = _run_in_child(fn, delay)
        if outcome == "finished":
            tally["finished_before_kill"] += 1
            assert _fingerprint(kind, product) == reference
        elif kind == "infer" or product.exists():
            # a killed run may have published some files: each one whole and identical
            if kind == "infer":
                got = _fingerprint(kind, product) if product.exists() else {}
                assert all(reference.get(k) == v for k, v in got.items()), got
                tally["killed_present_identical" if got else "killed_absent"] += 1
            else:
                _valid(kind, product)
                assert _fingerprint(kind, product) == reference
                tally["killed_present_identical"] += 1
        else:
            tally["killed_absent"] += 1
        _run_in_child(fn, None)  # the rerun
        assert _fingerprint(kind, product) == reference
        _valid(kind, product)
        assert _leftovers(kind, product) == [], "staging of the killed run survived the rerun"
    REPORT[kind] = {"trials": TRIALS, "clean_seconds": round(clean_s, 2), **tally}
    print(f"\nkill trials {kind}: {json.dumps(REPORT[kind])}")
