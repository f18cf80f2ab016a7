"""An embed run: search + ingest (as ``eoforge run``), the encoder and the field (cached in the
store), few-label classes, clusters, similarity, scores, pictures, STAC items, provenance.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eoforge.config import RunSpec
from eoforge.io.atomic import write_json_atomic
from eoforge.runs.embed_stages import (
    Advance,
    EmbedOptions,
    stage_classify,
    stage_clusters,
    stage_encoder,
    stage_evaluate,
    stage_field,
    stage_similarity,
)
from eoforge.runs.progress import EMBED_STAGES, timed_stage

__all__ = [
    "EMBED_STAGES",
    "publish_field_items",
    "run_embed",
    "run_product",
    "stage_embed_report",
]


def publish_field_items(
    field_uri: str, encoder: dict[str, Any], run_dir: Path, items: list[dict[str, Any]]
) -> dict[str, Any]:
    """The encoder's MLM item and one STAC item per field tile, in ``run_dir/field/``."""
    from eoforge.embeddings.catalog import encoder_item, field_item
    from eoforge.embeddings.field import list_field_tiles, open_field_tile

    folder = Path(run_dir) / "field"
    bboxes = [it["bbox"] for it in items if "bbox" in it]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes),
            max(b[2] for b in bboxes), max(b[3] for b in bboxes)]  # fmt: skip
    when = max(str(it["properties"].get("datetime")) for it in items)
    enc = encoder_item(Path(encoder["encoder_dir"]), encoder["record"], bbox, when)
    write_json_atomic(folder / "encoder-item.json", enc)
    written = []
    for name in list_field_tiles(field_uri):
        tile = open_field_tile(field_uri, name)
        hrefs = [
            next((lk["href"] for lk in it.get("links", []) if lk.get("rel") == "self"), it["id"])
            for it in items if it["id"] in tile.attrs.get("item_ids", [])
        ]  # fmt: skip
        item = field_item(
            tile, Path(field_uri).resolve().as_uri(), "./encoder-item.json", when, hrefs
        )
        write_json_atomic(folder / f"{item['id']}.json", item)
        written.append(item["id"])
    return {"encoder_item": enc["id"], "field_items": written}


def stage_embed_report(run_dir: Path, field_uri: str, results: dict[str, Any]) -> dict[str, Any]:
    """The embedding pictures in ``quicklooks/`` (PCA RGB, clusters, similarity and linear-probe
    classes per tile, few-shot curves) and the ``embeddings`` section of ``metrics.json``,
    which the run report shows."""
    from eoforge.embeddings.tiles import open_embedding_tiles
    from eoforge.runs.embed_report import fewshot_png, field_pca_png, raster_png

    run_dir = Path(run_dir)
    ql = run_dir / "quicklooks"
    tiles = open_embedding_tiles(field_uri)
    names = [t.grid.tile for t in tiles]

    def rel(png: Path) -> str:
        return png.relative_to(run_dir).as_posix()

    groups: list[list[list[str]]] = [
        [[f"{t}: embedding PCA (RGB = components 1-3)",
          rel(field_pca_png(field_uri, t, ql / f"embedding-pca-{t}.png"))] for t in names]
    ]  # fmt: skip
    classes = results.get("classify", {}).get("classes")
    for key, kind, title, maps in (
        ("clusters", "classes", "KMeans clusters", results.get("clusters", {}).get("maps", {})),
        ("similarity", "similarity", "cosine similarity to the query",
         results.get("similarity", {}).get("maps", {})),
        ("linear", "classes", "linear probe classes",
         {k.removeprefix("linear-"): v for k, v in results.get("classify", {}).get("maps", {}).items()
          if k.startswith("linear-")}),
    ):  # fmt: skip
        row = []
        for t in names:
            if maps.get(t):
                png = raster_png(Path(maps[t]), ql / f"embedding-{key}-{t}.png", f"{t}: {title}",
                                 kind, names=classes if key == "linear" else None)  # fmt: skip
                row.append([f"{t}: {title}", rel(png)])
        if row:
            groups.append(row)
    ev = results.get("evaluate", {})
    if ev.get("fewshot"):
        png = fewshot_png(ev["fewshot"], ql / "embedding-fewshot.png",
                          f"trained on {ev['train_tile']}, scored on {ev['test_tile']}")  # fmt: skip
        groups.append([[f"few-shot curves ({ev['train_tile']} -> {ev['test_tile']})", rel(png)]])
    summary = {
        "figures": groups,
        "dims": tiles[0].dims,
        "tiles": names,
        "classify": {k: v for k, v in results.get("classify", {}).items() if k != "maps"},
        "clusters": results.get("clusters", {}).get("k"),
        "similarity_query_tile": results.get("similarity", {}).get("query_tile"),
        **{k: ev[k] for k in ("fewshot", "train_tile", "test_tile") if k in ev},
    }
    return {"embeddings": summary, "pictures": sum(len(g) for g in groups)}


def _contracts(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The data contracts the run checked, as the run report lists them."""
    out = {r["contract"]["stage"]: r["contract"] for r in results.values()
           if isinstance(r.get("contract"), dict) and "stage" in r["contract"]}  # fmt: skip
    field = results.get("field", {}).get("contract")
    if field is not None:  # check_field raised if it failed
        out["embedding_field"] = {"stage": "embedding_field", "success": True,
                                  "rows": len(field), "evaluated": 3 * len(field)}  # fmt: skip
    return out


#: Runs one stage: (name, function) -> its result. Plain runs time it; Prefect makes it a task.
StageCall = Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]]


def run_embed(
    spec: RunSpec,
    out: Path,
    store: Path,
    options: EmbedOptions | None = None,
    api_url: str | None = None,
    evaluate: bool = True,
    call: StageCall | None = None,
    progress: Advance | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every embed stage and publish the run as ``out`` (plain Python unless ``call``
    wraps each stage, as the Prefect flow does)."""
    from eoforge.io.redact import redact_obj
    from eoforge.runs.pipeline import run_context
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        write_provenance,
    )
    from eoforge.runs.report_page import write_run_report
    from eoforge.runs.stages_data import _load_items, stac_endpoint, stage_ingest, stage_search

    options = options or EmbedOptions()
    results: dict[str, dict[str, Any]] = {}

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        res = call(name, fn) if call else timed_stage(name, fn, results)
        results[name] = res
        return res

    started = dt.datetime.now(dt.UTC).isoformat()
    store_s = str(Path(store).resolve())
    with run_context(out) as run_dir, stac_endpoint(spec, api_url) as url:
        found = step("search", lambda: stage_search(spec, url, run_dir))
        key = found["keys"]["cube"]
        cube = step("ingest", lambda: stage_ingest(spec, found["items_uri"], store_s, key))
        cube_uri = cube["cube_uri"]
        enc = step("encoder", lambda: stage_encoder(cube_uri, store_s, options, progress))
        fld = step("field", lambda: stage_field(cube_uri, enc["encoder_dir"], store_s, progress))
        field_uri = fld["field_uri"]
        items = _load_items(Path(found["items_uri"]))
        fld.update(publish_field_items(field_uri, enc, run_dir, items))
        step("classify", lambda: stage_classify(cube_uri, field_uri, run_dir, options))
        step("clusters", lambda: stage_clusters(field_uri, run_dir, options))
        step("similarity", lambda: stage_similarity(field_uri, run_dir, options))
        if evaluate:
            step("evaluate", lambda: stage_evaluate(cube_uri, field_uri, run_dir, options))
        step("report", lambda: stage_embed_report(run_dir, field_uri, results))
        metrics = {"embeddings": results["report"]["embeddings"]}
        write_json_atomic(run_dir / "metrics.json", metrics)
        record: dict[str, Any] = {
            "eoforge_run": "embed",
            "parameters": spec.model_dump(mode="json"),
            "spec_fingerprint": spec.fingerprint(),
            "started": started,
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "options": asdict(options),
            "store_products": {"cube": cube_uri, "encoder": enc["encoder_dir"], "field": field_uri},
            "stac_items": [it["id"] for it in items],
            "contracts": _contracts(results),
            "stage_seconds": {k: v.get("stage_seconds") for k, v in results.items()},
            "reused_from_store": {k: bool(v["reused"]) for k, v in results.items() if "reused" in v},
            "stages": {k: {kk: vv for kk, vv in v.items() if kk not in ("query_vector", "embeddings")}
                       for k, v in results.items()},
            "packages": package_versions(),
            "git": git_revision(),
        }  # fmt: skip
        record = redact_obj(json.loads(json.dumps(record, default=str)))
        write_run_report(run_dir, metrics, record, items)
        record["outputs"] = output_records(run_dir, Path(out).resolve())
        write_provenance(run_dir / "provenance.json", record)
    return results


def run_product(
    out: Path, name: str, fn: Callable[[Path], dict[str, Any]], call: StageCall | None = None
) -> dict[str, Any]:
    """One product stage over a stored field, published as the run folder ``out`` with its
    provenance (``call`` wraps the stage, as in :func:`run_embed`)."""
    from eoforge.runs.pipeline import run_context
    from eoforge.runs.provenance import (
        git_revision,
        output_records,
        package_versions,
        write_provenance,
    )

    results: dict[str, dict[str, Any]] = {}
    with run_context(out) as run_dir:
        job = lambda: fn(run_dir)  # noqa: E731 - the stage sees the staging folder
        result = call(name, job) if call else timed_stage(name, job, results)
        record = {
            "eoforge_run": f"embed-{name}",
            "spec_fingerprint": "",
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "result": {k: v for k, v in result.items() if k != "query_vector"},
            "packages": package_versions(),
            "git": git_revision(),
            "outputs": output_records(run_dir, Path(out).resolve()),
        }
        write_provenance(run_dir / "provenance.json", record)
    return result
