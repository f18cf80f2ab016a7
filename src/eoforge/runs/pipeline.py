"""The pipeline's stages as plain functions over URIs (paths), each checked by its data contract.

Expensive, reusable products (cube, chips, model, baseline) live in a content-addressed
*store*: their path is their cache key, derived from what identifies the data (STAC item ids +
``updated``, spec fingerprints), so a rerun with the same inputs finds them and skips the work,
and a changed item or spec recomputes only what depends on it (ADR 0003). Per-run outputs
(predictions, metrics, report, provenance) go to the run directory.

The stages live in small modules of this wing:
:mod:`eoforge.runs.store` (cache keys, store layout, production model), :mod:`eoforge.runs.stages_data`
(STAC endpoint, search, ingest, chips), :mod:`eoforge.runs.stages_model` (train, baseline, infer) and
:mod:`eoforge.runs.stages_report` (evaluate, track, report). This module keeps the run folder
(:func:`run_context`, :func:`check_out_dir`) and :func:`run_plain`.

Prefect tasks in ``tasks/`` wrap these one to one; :func:`run_plain` chains them without Prefect
(the reference for measuring orchestration overhead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from eoforge.config import RunSpec
from eoforge.errors import InputError
from eoforge.runs.progress import STAGES
from eoforge.runs.stages_data import stac_endpoint, stage_chips, stage_ingest, stage_search
from eoforge.runs.stages_model import stage_baseline, stage_infer, stage_train
from eoforge.runs.stages_report import _TestTruth as _TestTruth
from eoforge.runs.stages_report import stage_evaluate, stage_report, stage_summary, stage_track

__all__ = [
    "STAGES",
    "check_out_dir",
    "check_run_places",
    "plan_stages",
    "refuse_url",
    "run_context",
    "run_plain",
]


@contextlib.contextmanager
def run_context(out: Path) -> Iterator[Path]:
    """A staging folder for one run, published as ``out`` only if the block succeeds.

    ``out`` is checked before the run starts and again just before it is replaced, so files a
    user put there while the run was going are not lost either.
    """
    from eoforge.io.atomic import clean_stale_staging, staged_dir

    refuse_url(out, "--out")
    out = Path(out).resolve()
    check_out_dir(out)
    clean_stale_staging(out.parent)
    with staged_dir(out) as run_dir:
        yield run_dir
        check_out_dir(out)


def check_run_places(out: Path, store: Path | str) -> None:
    """Before any work: ``out`` is new, empty or a previous eoforge run, and both ``out``'s
    parent (where the run is staged) and the store can be written.

    Raises:
        InputError: naming the path and what to do (a file, read-only, not an eoforge run).
        TransientError: the file system is full.
    """
    from eoforge.io.writable import check_writable_dir

    refuse_url(out, "--out")
    out = Path(out).resolve()
    check_out_dir(out)
    check_writable_dir(out.parent, "the parent folder of --out")
    if "://" not in str(store):
        check_writable_dir(Path(store), "the store (--store / EOFORGE_STORE)")


def refuse_url(path: Path | str, option: str) -> None:
    """Refuse a URL where a local folder is written (``s3://b/k``, or ``s3:/b/k`` as a Path
    option folds it), instead of writing a local folder named ``s3:``.

    Raises:
        InputError: naming the URL and what to pass instead.
    """
    import re

    text = str(path)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", text):
        url = re.sub(r"^([^:]+):/+", r"\1://", text)
        raise InputError(
            f"{option} '{url}' is a URL, but this command writes a local folder there; pass a "
            "local folder (only `eoforge predict` publishes to an object store: --out s3://...)."
        )


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that eoforge cannot prove holds only a previous eoforge run.

    A previous run is replaced (only when the new run succeeds) if its ``provenance.json`` is
    an eoforge record and every file in the folder is one of the outputs that record lists; a
    ``provenance.json`` of another tool, or a single file eoforge did not write, keeps the
    folder as it is.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"output path '{out}' is a file; pass a folder path to --out.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    why = _not_an_eoforge_run(out)
    if why:
        raise InputError(
            f"output folder '{out}' is not empty and is not an eoforge run that eoforge can "
            f"prove holds only its own files ({why}); eoforge will not replace it. Pass a new "
            "or empty folder to --out, or move your files out of it."
        )


#: The stages each stage needs the results of.
_NEEDS: dict[str, tuple[str, ...]] = {
    "search": (),
    "ingest": ("search",),
    "chips": ("ingest",),
    "train": ("chips",),
    "baseline": ("chips",),
    "infer": ("train",),
    "evaluate": ("infer", "baseline"),
    "track": ("evaluate",),
    "report": ("evaluate",),
}


def plan_stages(requested: Iterable[str] | None = None) -> tuple[str, ...]:
    """The stages to run, in order, for ``requested`` (None: all): each requested stage and
    every stage it needs. Stored products (cube, chips, model, baseline) that already exist are
    reused, so a needed stage that ran before costs little.

    Raises:
        InputError: an unknown stage name.
    """
    if requested is None:
        return STAGES
    wanted = [s.strip() for s in requested if s.strip()]
    unknown = [s for s in wanted if s not in _NEEDS]
    if unknown or not wanted:
        raise InputError(
            f"unknown stage(s) {unknown or wanted}; choose from {', '.join(STAGES)} "
            "(e.g. --stages ingest,chips)."
        )
    plan: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in plan:
            plan.add(name)
            todo += _NEEDS[name]
    return tuple(s for s in STAGES if s in plan)


def _not_an_eoforge_run(out: Path) -> str | None:
    """Why ``out`` is not (provably) a folder eoforge wrote, or None when it is."""
    import json
    from urllib.parse import unquote, urlsplit

    prov = out / "provenance.json"
    if not prov.is_file():
        return "it has no provenance.json"
    try:
        record = json.loads(prov.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return "its provenance.json is not JSON"
    outputs = record.get("outputs") if isinstance(record, dict) else None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("eoforge_run"), str)
        or not isinstance(record.get("spec_fingerprint"), str)
        or not isinstance(outputs, list)
    ):
        return "its provenance.json was not written by eoforge"
    owned: set[str] = set()
    for entry in outputs:
        uri = entry.get("uri") if isinstance(entry, dict) else None
        if not isinstance(uri, str) or not uri.startswith("file:"):
            return "its provenance.json was not written by eoforge"
        path = Path(unquote(urlsplit(uri).path))
        try:
            owned.add(path.relative_to(out).as_posix())
        except ValueError:
            return f"its provenance.json lists outputs of another folder ({path.parent})"
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() and not p.is_symlink():
            continue
        if rel == "provenance.json" or rel in owned or any(rel.startswith(f"{o}/") for o in owned):
            continue
        return f"'{rel}' is not one of the outputs its provenance.json lists"
    return None


def run_plain(
    spec: RunSpec,
    out: Path,
    store: Path,
    api_url: str | None = None,
    on_stage: Callable[[str, float], None] | None = None,
    stages: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the stages in order without Prefect and publish the run as ``out``.

    Args:
        spec: the run spec.
        out: run folder, published when every stage passed.
        store: the store of cubes, chips, models and baselines.
        api_url: STAC API (None: ``spec.stac.api_url`` or the local catalog).
        on_stage: called with (stage, seconds) after each stage.
        stages: run only these stages and the ones they need (None: all, with the report).

    Raises:
        InputError: bad input (e.g. a label file that is missing or does not fit the class
            schema: checked before anything is written), or an unknown stage.
    """
    from eoforge.labels.sources import check_label_source
    from eoforge.runs.progress import stage, timed_stage

    plan = plan_stages(stages)
    check_run_places(out, store)
    check_label_source(spec.labels, spec.stac.label_asset)
    results: dict[str, dict[str, Any]] = {}
    store_s = str(Path(store).resolve())

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name not in plan:
            return {}
        res = timed_stage(name, fn, results)
        if on_stage:
            on_stage(name, res["stage_seconds"])
        return res

    with stac_endpoint(spec, api_url) as url, run_context(out) as run_dir:
        rd, final = str(run_dir), str(Path(out).resolve())
        s = timed("search", lambda: stage_search(spec, url, run_dir))
        keys = s.get("keys", {})
        c = timed("ingest", lambda: stage_ingest(spec, s["items_uri"], store_s, keys["cube"]))
        ch = timed("chips", lambda: stage_chips(spec, c["cube_uri"], store_s, keys["chips"]))
        m = timed("train", lambda: stage_train(spec, ch["chips_uri"], store_s, keys["model"]))
        b = timed(
            "baseline",
            lambda: stage_baseline(spec, ch["chips_uri"], c["cube_uri"], store_s, keys["baseline"]),
        )
        timed("infer", lambda: stage_infer(spec, m["model_dir"], c["cube_uri"], s["items_uri"], rd))
        e = timed("evaluate", lambda: stage_evaluate(spec, c["cube_uri"], b["baseline_dir"], rd))
        timed("track", lambda: stage_track(spec, rd, store_s, m, e["metrics"]))
        if "report" in plan:
            with stage("report"):
                results["report"] = stage_report(spec, rd, final, results)
        else:
            results["summary"] = stage_summary(spec, rd, final, results)
    return results
