"""Hand-written mutants of train / infer / promote: does the test suite notice each one?

    .venv/bin/python scripts/mutants.py [--slow] [--only NAME ...] [--json OUT] [--list]

Each mutant is one textual change to one module: the kind of bug the suite must catch (saving
the last epoch's weights instead of the best, uniform blend weights, a model that answers one
class, a promotion that never happens, ...). For each, the script copies ``src/`` to a temporary
folder, applies the change there (the checkout is never touched), and runs the mutant's target
tests with that copy first on ``PYTHONPATH``, so the tests, and every ``eoforge`` subprocess or
worker they start, import the mutated package. A mutant is **killed** when at least one target
test fails; it **survives** when they all pass. Before any mutant, the same tests run once on the
unmutated source: a test failing there would count as a false kill, so the script stops.

A mutant whose ``old`` text no longer occurs exactly once in its module is reported as
``stale`` (the code moved on; update the mutant). ``--slow`` adds each mutant's slow end-to-end
targets (the demo, the polygon-label run, the Prefect event test: minutes each).
Every target runs (no ``-x``), so the report lists every test that kills each mutant.
Exit status: 0 when every mutant that ran was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "eoforge"


@dataclass(frozen=True)
class Mutant:
    """One textual change to one module of ``src/eoforge`` and the tests that must catch it."""

    name: str
    what: str
    module: str
    """Path of the module, relative to ``src/eoforge``."""
    old: str
    """Text that must occur exactly once in the module."""
    new: str
    tests: tuple[str, ...]
    """Fast target tests (pytest node ids)."""
    slow_tests: tuple[str, ...] = field(default=())
    """Slow end-to-end targets, run with ``--slow``."""


TRAIN = "tests/eoforge/training/test_train.py"
PREDICT = "tests/eoforge/inference/test_predict.py"
DEMO = "tests/e2e/test_demo.py::test_demo_end_to_end"
POLYGONS = "tests/eoforge/labels/test_sources.py::test_run_on_polygon_labels"
EVENTS = (
    "tests/orchestration/test_events.py::test_landed_items_trigger_inference_of_exactly_those_items"
)

MUTANTS = (
    Mutant(
        "save-last-epoch",
        "training saves every epoch's weights, so the last epoch's end up on disk",
        "training/train.py",
        "                    best_miou, best_epoch = val_miou, epoch\n                    best_state = {",
        "                    best_miou, best_epoch = val_miou, epoch\n"
        "                if True:  # MUTANT\n                    best_state = {",
        (f"{TRAIN}::test_saved_weights_are_the_best_epochs_not_the_last",),
    ),
    Mutant(
        "uniform-blend-weights",
        "overlapping windows are blended with equal weights instead of ramps",
        "inference/windows.py",
        "        weights.append(w)\n",
        "        weights.append(np.ones(edge, np.float32))  # MUTANT\n",
        (
            f"{PREDICT}::test_blend_weights_hide_each_windows_border",
            f"{PREDICT}::test_axis_plan_shifts_last_window_inward_and_pads_short_axes",
        ),
    ),
    Mutant(
        "constant-class-model",
        "the network answers class 0 (vegetation, the majority) everywhere",
        "training/models.py",
        "        out: torch.Tensor = self.head(h)\n",
        "        out: torch.Tensor = self.head(h) * 0.0  # MUTANT\n"
        "        out = out + (torch.arange(out.shape[1], device=out.device) == 0).to(out.dtype)"
        ".view(1, -1, 1, 1)\n",
        (f"{TRAIN}::test_training_learns_the_synthetic_task",),
        (DEMO, POLYGONS),
    ),
    Mutant(
        "constant-class-prediction",
        "the sliding-window argmax always picks class 0",
        "inference/windows.py",
        "        index[probs[k] > best] = k\n",
        "        pass  # MUTANT\n",
        (
            f"{PREDICT}::test_output_shape_equals_input_shape",
            "tests/eoforge/runs/test_scenes.py::test_infer_batch_writes_cog_and_item_per_scene",
        ),
        (DEMO,),
    ),
    Mutant(
        "skipped-promotion",
        "promote_model decides but never writes the production pointer",
        "runs/store.py",
        "    if better:\n        write_json_atomic(",
        "    if False:  # MUTANT\n        write_json_atomic(",
        ("tests/eoforge/runs/test_store.py",),
    ),
    Mutant(
        "pipeline-skips-promotion",
        "the pipeline flow never calls the promote task",
        "orchestration/flows/pipeline.py",
        '        orchestration["promotion"] = promote_task(store_s, m["model_dir"], e["metrics"], '
        "final)\n",
        "        pass  # MUTANT\n",
        (),
        (DEMO, EVENTS),
    ),
    Mutant(
        "scale-flow-own-cluster",
        "the scale infer flow ignores the scheduler it is given and starts its own cluster",
        "orchestration/flows/scale.py",
        "runner = scale_infer_flow.with_options(task_runner=task_runner_for(dask))",
        "runner = scale_infer_flow  # MUTANT",
        (),
        (
            "tests/eoforge/orchestration/flows/test_scale_flow.py"
            "::test_infer_flow_runs_on_a_scheduler_address",
        ),
    ),
    Mutant(
        "infer-band-order",
        "per-scene inference stacks the bands in reverse order",
        "runs/scenes.py",
        "        reader = ChunkRowReader([group[b] for b in bands], 0)\n",
        "        reader = ChunkRowReader([group[b] for b in reversed(bands)], 0)  # MUTANT\n",
        ("tests/eoforge/runs/test_scenes.py::test_infer_batch_writes_cog_and_item_per_scene",),
    ),
    Mutant(
        "tree-hash-ignores-names",
        "sha256_tree hashes file contents but not their names",
        "io/atomic.py",
        "        h.update(p.relative_to(root).as_posix().encode())\n",
        "        pass  # MUTANT\n",
        ("tests/eoforge/io/test_atomic.py::test_tree_hash_follows_content_and_names_only",),
    ),
)


def targets(mutant: Mutant, slow: bool) -> list[str]:
    return [*mutant.tests, *(mutant.slow_tests if slow else ())]


def run_tests(tests: list[str], src: Path | None) -> tuple[int, float, str]:
    """pytest on ``tests`` (every one of them), importing eoforge from ``src``."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr


def mutated_copy(mutant: Mutant, tmp: Path) -> Path | None:
    """``src/`` copied under ``tmp`` with the mutant applied; None if it no longer applies."""
    src = tmp / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    module = src / "eoforge" / mutant.module
    text = module.read_text()
    if text.count(mutant.old) != 1:
        return None
    module.write_text(text.replace(mutant.old, mutant.new))
    probe = subprocess.run(
        [sys.executable, "-c", "import eoforge; print(eoforge.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(src)), "the mutated copy is not the one imported"
    return src


def failed_tests(output: str) -> list[str]:
    """The failing tests named in pytest's short summary."""
    return [
        line.split(" ", 2)[1]
        for line in output.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]


def check(mutant: Mutant, slow: bool) -> dict[str, Any]:
    tests = targets(mutant, slow)
    if not tests:
        return {"name": mutant.name, "status": "not run", "why": "only slow targets: use --slow"}
    with tempfile.TemporaryDirectory(prefix=f"eoforge-mutant-{mutant.name}-") as tmp:
        src = mutated_copy(mutant, Path(tmp))
        if src is None:
            return {"name": mutant.name, "status": "stale", "why": f"old text not unique in "
                    f"src/eoforge/{mutant.module}"}  # fmt: skip
        rc, seconds, output = run_tests(tests, src)
    if rc == 0:
        status, by = "survived", None
    elif rc == 1:
        status, by = "killed", failed_tests(output)
    else:
        status, by = f"error (pytest exit {rc})", output[-1500:]
    return {"name": mutant.name, "status": status, "by": by, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also run the slow e2e targets")
    parser.add_argument("--only", nargs="+", default=None, help="mutant names to run")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; --list shows them")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28} {m.what}")
            for test in targets(m, True):
                print(f"{'':28} {test}")
        return 0

    baseline = sorted({t for m in chosen for t in targets(m, args.slow)})
    if baseline:
        rc, seconds, output = run_tests(baseline, None)
        print(f"baseline: {len(baseline)} target(s) on the unmutated source, {seconds:.0f} s")
        if rc != 0:
            print(output[-3000:])
            print("the targets fail without any mutant: fix them first")
            return 2
    results = []
    for mutant in chosen:
        result = check(mutant, args.slow)
        results.append(result)
        print(f"{mutant.name:28} {result['status']} ({result.get('seconds', 0)} s)")
        if result["status"] == "killed":
            for test in result["by"]:
                print(f"{'':28} by {test}")
        if result["status"].startswith("error"):
            print(result["by"])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["status"] in ("killed", "not run") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
