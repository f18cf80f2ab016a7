"""Prefect-side records of a run: artifacts (summary table + provenance markdown) and asset lineage.

Lineage lives in provenance.json and the STAC links; the asset events here are an extra so the
Prefect UI shows STAC items -> cube -> chips -> model -> predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.assets import materialize

from eoforge.io.redact import redact, redact_obj

#: The data contract checked at the end of each stage.
_CONTRACT = {"search": "items", "ingest": "cube", "chips": "chips", "infer": "predictions"}


@task(name="publish-artifacts", persist_result=False)
def publish_artifacts(final_dir: str) -> dict[str, str]:
    """A table of stage timings / cache reuse / contracts and a markdown page linking the run."""
    run = Path(final_dir)
    prov = json.loads((run / "provenance.json").read_text())
    rows = [
        {
            "stage": stage,
            "seconds": round(float(sec or 0.0), 2),
            "reused": prov.get("reused_from_store", {}).get(stage, False),
            "contract": ("passed" if prov["contracts"][_CONTRACT[stage]]["success"] else "FAILED")
            if _CONTRACT.get(stage) in prov["contracts"]
            else "-",
        }
        for stage, sec in prov["stage_seconds"].items()
    ]
    table_id = create_table_artifact(
        table=redact_obj(rows),
        key="eoforge-run-stages",
        description=f"eoforge run {run.name}: stages",
    )
    m = prov["metrics"]
    md = "\n".join(
        [
            f"# eoforge run `{run.name}`",
            "",
            f"- report: [{run / 'report.html'}]({(run / 'report.html').as_uri()})",
            f"- provenance: [{run / 'provenance.json'}]({(run / 'provenance.json').as_uri()})",
            f"- git: `{prov['git'].get('commit')}` (dirty: {prov['git'].get('dirty')})",
            f"- STAC items: {len(prov['stac_items'])}",
            f"- MLflow run: `{prov.get('tracking', {}).get('run_id')}` at "
            f"`{prov.get('tracking', {}).get('tracking_uri')}`",
            "",
            "| | mIoU | pixel accuracy |",
            "| --- | --- | --- |",
            f"| model | {m['miou']:.3f} | {m['pixel_accuracy']:.3f} |",
            f"| random forest | {m['baseline_miou']:.3f} | {m['baseline_pixel_accuracy']:.3f} |",
        ]
    )
    md_id = create_markdown_artifact(
        markdown=redact(md), key="eoforge-run-provenance", description="eoforge run provenance"
    )
    return {"table_artifact_id": str(table_id), "markdown_artifact_id": str(md_id)}


@materialize("eoforge://lineage", name="lineage", persist_result=False)
def _materialized(uri: str) -> str:
    return uri


def _asset_key(uri: str) -> str:
    return uri if "://" in uri else Path(uri).resolve().as_uri()


def record_lineage(
    collection: str, item_ids: list[str], products: dict[str, str], predictions: list[str]
) -> None:
    """Emit asset materializations: items -> cube -> chips -> model -> predictions."""
    items = [f"stac://{collection}/{i}" for i in item_ids]
    cube, chips, model = (_asset_key(products[k]) for k in ("cube", "chips", "model"))
    graph: list[tuple[str, list[str]]] = [
        (cube, items),
        (chips, [cube]),
        (model, [chips]),
        *[(_asset_key(p), [model, cube]) for p in predictions],
    ]
    for asset, deps in graph:
        _materialized.with_options(assets=[asset], asset_deps=list(deps))(asset)


def lineage_inputs(results: dict[str, dict[str, Any]], collection: str) -> dict[str, Any]:
    """The arguments of :func:`record_lineage` from the pipeline's stage results."""
    return {
        "collection": collection,
        "item_ids": list(results["search"]["item_ids"]),
        "products": {
            "cube": results["ingest"]["cube_uri"],
            "chips": results["chips"]["chips_uri"],
            "model": results["train"]["model_dir"],
        },
        "predictions": [v["cog"] for v in results["infer"]["predictions"].values()],
    }
