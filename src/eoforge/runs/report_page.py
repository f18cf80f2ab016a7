"""The HTML report of a run: model vs random forest, the run's inputs, timings and contracts.

The page is one file next to its pictures (``quicklooks/*.png``, referenced relative to the
page), so a run folder can be zipped and mailed. :func:`write_run_report` builds it from what a
run folder holds (``metrics.json``, the provenance record, ``items.json``, the quicklooks), so
:func:`rebuild_report` can redo it later from the folder alone.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from eoforge.errors import InputError
from eoforge.io.atomic import staged_file
from eoforge.io.redact import redact
from eoforge.runs.progress import EMBED_STAGES, STAGES
from eoforge.runs.report_html import embedding_cards, embeddings_section
from eoforge.runs.report_html import esc as _esc
from eoforge.runs.report_html import figure as _figure
from eoforge.runs.report_html import table as _table

__all__ = [
    "EMBEDDINGS",
    "QUICKLOOKS",
    "rebuild_report",
    "write_report",
    "write_run_report",
]

#: The quicklooks a run writes (file in ``quicklooks/``, caption), in the order they are shown;
#: those in one tuple are shown side by side (model left, random forest right; the model's
#: uncertainty between them).
QUICKLOOKS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("true_colour.png", "True colour (first test scene)"), ("label.png", "Reference label")),
    (
        ("prediction.png", "Model prediction"),
        ("uncertainty.png", "Model uncertainty (entropy)"),
        ("baseline.png", "Random forest prediction"),
    ),
    (
        ("confusion_model.png", "Model confusion matrix (test tiles)"),
        ("confusion_baseline.png", "Random forest confusion matrix (test tiles)"),
    ),
    (("learning_curves.png", "Learning curves"), ("aoi.png", "Area of interest")),
)

#: Key of ``metrics.json`` holding an embed run's results (figures, few-shot curves).
EMBEDDINGS = "embeddings"

#: Display names of the systems compared (keys of ``metrics.json``).
SYSTEM_NAMES = {"model": "model", "baseline": "random forest"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222;
       padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.5em; } .card span { color: #666; font-size: 0.85em; }
.ok { color: #1a7f37; } .bad { color: #c62828; font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
td.best { font-weight: bold; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; align-items: start; }
.pair.trio { grid-template-columns: 1fr 1fr 1fr; }
figure { margin: 0.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
"""


def _systems(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{display name: metrics}``: a run's ``metrics.json`` holds ``model`` and ``baseline``;
    a single metrics dict counts as the model's."""
    if isinstance(metrics.get("model"), Mapping):
        return {
            SYSTEM_NAMES.get(k, k): metrics[k]
            for k in ("model", "baseline")
            if isinstance(metrics.get(k), Mapping)
        }
    if "miou" in metrics:
        return {"model": metrics}
    return {
        SYSTEM_NAMES.get(str(k), str(k)): v for k, v in metrics.items() if isinstance(v, Mapping)
    }


def _row(label: str, values: Sequence[Any], bold_best: bool) -> str:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    best = max(numbers) if bold_best and len(values) > 1 and numbers else None
    cells = "".join(
        f"<td{' class=best' if v is not None and v == best else ''}>{_esc(v)}</td>" for v in values
    )
    return f"<tr><td>{_esc(label)}</td>{cells}</tr>"


def _classes(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Class names in the schema's order (``classes``; metrics.json sorts its keys)."""
    ordered: dict[str, None] = {}
    for m in systems.values():
        scored = m.get("per_class_iou", {})
        ordered.update(dict.fromkeys(str(c) for c in m.get("classes") or [] if c in scored))
        ordered.update(dict.fromkeys(str(c) for c in scored))
    return list(ordered)


def _comparison_table(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    classes = _classes(systems)
    rows: list[tuple[str, list[Any]]] = [
        ("mIoU", [m.get("miou") for m in systems.values()]),
        ("pixel accuracy", [m.get("pixel_accuracy") for m in systems.values()]),
    ]
    rows += [
        (f"IoU {c}", [m.get("per_class_iou", {}).get(c) for m in systems.values()]) for c in classes
    ]
    out = ["<table class='metrics'><thead><tr><th>metric</th>"]
    out += [f"<th>{_esc(name)}</th>" for name in systems]
    out.append("</tr></thead><tbody>")
    out += [_row(label, values, bold_best=True) for label, values in rows]
    out.append("</tbody></table>")
    return out


_PER_CLASS = (
    ("IoU", "per_class_iou"),
    ("precision", "per_class_precision"),
    ("recall", "per_class_recall"),
    ("F1", "per_class_f1"),
)


def _per_class_table(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per class; each score once per system, side by side; support (labelled test
    pixels) once, as every system is scored on the same pixels."""
    classes = _classes(systems)
    if not classes:
        return []
    names = list(systems)
    out = ["<table class='per-class'><thead><tr><th rowspan=2>class</th>"]
    out += [f"<th colspan={len(names)}>{label}</th>" for label, _ in _PER_CLASS]
    out.append("<th rowspan=2>support (pixels)</th></tr><tr>")
    out += [f"<th>{_esc(n)}</th>" for _ in _PER_CLASS for n in names]
    out.append("</tr></thead><tbody>")
    for c in classes:
        out.append(f"<tr><td>{_esc(c)}</td>")
        for _, key in _PER_CLASS:
            values = [systems[n].get(key, {}).get(c) for n in names]
            numbers = [v for v in values if isinstance(v, float)]
            best = max(numbers) if len(names) > 1 and numbers else None
            out += [
                f"<td{' class=best' if v is not None and v == best else ''}>{_esc(v)}</td>"
                for v in values
            ]
        support = next(
            (m["support"][c] for m in systems.values() if c in m.get("support", {})), None
        )
        out.append(f"<td>{_esc(support)}</td></tr>")
    out.append("</tbody></table>")
    return out


def _page(title: str, body: Sequence[str], subtitle: str | None = None) -> str:
    head = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        # no favicon request: the page works from a zip, without a server
        "<link rel='icon' href='data:,'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        head.append(f"<p class='sub'>{html.escape(subtitle)}</p>")
    return "\n".join([*head, *body, "</body></html>\n"])


def _write(out: Path, text: str) -> Path:
    with staged_file(out) as tmp:  # no signed URL or credential ever reaches a report
        tmp.write_text(redact(text), encoding="utf-8")
    return out


def write_report(
    out_html: Path,
    title: str,
    metrics: Mapping[str, Any],
    images: Sequence[tuple[str, Path]],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    links: Mapping[str, str] | None = None,
) -> Path:
    """Write a generic report: metrics side by side, figures, extra tables and links.

    Args:
        out_html: destination (``DIR/report.html``).
        title: page title.
        metrics: ``{system name: metrics dict}`` (e.g. ``{"model": ..., "baseline": ...}``), each
            from :func:`eoforge.training.metrics.metrics_from_confusion`, or a run's whole
            ``metrics.json``; a single metrics dict is taken as the model's.
        images: (caption, PNG path) in display order; a relative path is relative to the
            report's folder.
        tables: extra tables, ``{heading: rows}``; columns are the union of the rows' keys.
        links: ``{label: href}`` (e.g. provenance.json, model, predictions), hrefs as given.

    Returns:
        ``out_html``.
    """
    out = Path(out_html)
    systems = _systems(metrics)
    body: list[str] = []
    if links:
        body.append("<h2>Outputs</h2><ul class='links'>")
        body += [
            f"<li><a href='{html.escape(href, quote=True)}'>{html.escape(label)}</a></li>"
            for label, href in links.items()
        ]
        body.append("</ul>")
    if systems:
        body += ["<h2>Metrics</h2>", *_comparison_table(systems), *_per_class_table(systems)]
    if images:
        body.append("<h2>Figures</h2>")
        body += [_figure(caption, png, out.parent) for caption, png in images]
    for heading, rows in (tables or {}).items():
        body += [f"<h2>{html.escape(heading)}</h2>", *_table(rows)]
    return _write(out, _page(title, body))


# --------------------------------------------------------------------------- a run's page


def _inputs(record: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> list[str]:
    stac = record.get("parameters", {}).get("stac", {})
    dates = sorted(str(it.get("properties", {}).get("datetime", ""))[:10] for it in items)
    source = stac.get("api_url") or f"bundled catalog {Path(str(stac.get('catalog_dir'))).name}"
    facts = [
        ("STAC source", source),
        ("collection", stac.get("collection")),
        ("search dates", stac.get("datetime") or "any"),
        ("search box (W, S, E, N)", stac.get("bbox") or "any"),
        ("bands", stac.get("bands")),
        ("items", len(items)),
        ("item dates", f"{dates[0]} … {dates[-1]}" if dates else None),
        ("label source", record.get("label_source")),
    ]
    out = ["<h2>Inputs</h2><table class='inputs'><tbody>"]
    out += [f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in facts]
    out.append("</tbody></table>")
    rows = [
        {
            "item": it.get("id"),
            "date": str(it.get("properties", {}).get("datetime", ""))[:19] or None,
            "cloud cover (%)": it.get("properties", {}).get("eo:cloud_cover"),
            "tile": it.get("properties", {}).get("grid:code"),
        }
        for it in sorted(items, key=lambda i: str(i.get("properties", {}).get("datetime", "")))
    ]
    return [*out, "<details><summary>items</summary>", *_table(rows), "</details>"]


_CONTRACT_ORDER = ("items", "cube", "chips", "chip_index", "predictions")
_SPLIT_ORDER = ("train", "val", "test")


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``mapping`` with the keys of ``order`` first, in that order (provenance.json and
    metrics.json sort their keys)."""
    first = {k: mapping[k] for k in order if k in mapping}
    return {**first, **{k: v for k, v in mapping.items() if k not in first}}


def _timings(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    order = EMBED_STAGES if record.get("eoforge_run") == "embed" else STAGES
    seconds = _ordered(record.get("stage_seconds", {}), order)
    reused = record.get("reused_from_store", {})
    rows = [
        {"stage": k, "seconds": round(float(v or 0.0), 2), "reused from store": reused.get(k)}
        for k, v in seconds.items()
    ]
    rows.append(
        {"stage": "total", "seconds": round(sum(float(v or 0.0) for v in seconds.values()), 2)}
    )
    return rows


def _contracts(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "contract": name,
            "passed": c.get("success"),
            "rows": c.get("rows"),
            "checks": c.get("evaluated"),
            "failures": len(c.get("failures") or []),
            "seconds": c.get("seconds"),
        }
        for name, c in _ordered(record.get("contracts", {}), _CONTRACT_ORDER).items()
    ]


def _cards(
    systems: Mapping[str, Mapping[str, Any]],
    record: Mapping[str, Any],
    extra: Sequence[tuple[str, str]] = (),
) -> list[str]:
    contracts = list(record.get("contracts", {}).values())
    passed = sum(bool(c.get("success")) for c in contracts)
    cards = [
        (f"{m.get('miou'):.3f}" if m.get("miou") is not None else "–", f"mIoU, {name}")
        for name, m in systems.items()
    ]
    cards += extra
    cards.append((f"{passed}/{len(contracts)}", "data contracts passed"))
    seconds = sum(float(v or 0.0) for v in record.get("stage_seconds", {}).values())
    cards.append((f"{seconds:.0f} s", "stage time"))
    parity = record.get("training", {}).get("parity_max_abs_diff")
    if parity is not None:
        cards.append((f"{parity:.1e}", "ONNX parity max |diff|"))
    out = ["<div class='cards'>"]
    out += [f"<div class='card'><b>{_esc(v)}</b><span>{_esc(k)}</span></div>" for v, k in cards]
    out.append("</div>")
    if passed < len(contracts):
        out.append("<p class='bad'>Some data contracts failed: see below.</p>")
    return out


def _figures(folder: Path) -> list[str]:
    ql = folder / "quicklooks"
    out = ["<h2>Figures</h2>"]
    for pair in QUICKLOOKS:
        present = [(name, caption) for name, caption in pair if (ql / name).is_file()]
        if present:
            out.append("<div class='pair trio'>" if len(present) == 3 else "<div class='pair'>")
            out += [_figure(caption, ql / name, folder) for name, caption in present]
            out.append("</div>")
    return out


def _area_map(run: Path, record: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> None:
    """``quicklooks/aoi.png``: the items' footprints and the search box."""
    from eoforge.runs.report import footprints_png

    footprints = [
        (str(it.get("id")), it["geometry"]["coordinates"][0])
        for it in items
        if (it.get("geometry") or {}).get("type") == "Polygon"
    ]
    bbox = record.get("parameters", {}).get("stac", {}).get("bbox")
    if footprints or bbox:
        footprints_png(footprints, run / "quicklooks" / "aoi.png", bbox)


def write_run_report(
    run_dir: Path,
    metrics: Mapping[str, Any],
    record: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
) -> Path:
    """Write ``run_dir/report.html`` for a run.

    Args:
        run_dir: the run folder (its ``quicklooks/`` are shown if present).
        metrics: the run's ``metrics.json`` (``model`` and ``baseline`` metrics dicts).
        record: the run's provenance record (``parameters``, ``stage_seconds``,
            ``reused_from_store``, ``contracts``, ``training``, ``chip_counts``, ``eoforge_run``).
        items: the STAC items the run used (``items.json`` features).

    Returns:
        The report's path.
    """
    run = Path(run_dir)
    _area_map(run, record, items)
    emb = metrics.get(EMBEDDINGS)
    systems = _systems({k: v for k, v in metrics.items() if k != EMBEDDINGS})
    engine = record.get("orchestration", {}).get("engine", "plain-python")
    body = [*_cards(systems, record, embedding_cards(emb) if emb else [])]
    body += _inputs({**record, "label_source": metrics.get("label_source")}, items)
    if systems:
        body += ["<h2>Model vs random forest</h2>", *_comparison_table(systems)]
        body += ["<h3>Per class (test tiles)</h3>", *_per_class_table(systems)]
    body += _figures(run)
    if emb:
        body += embeddings_section(run, emb)
    body += [
        "<h2>Stage timings</h2>",
        *_table(_timings(record)),
        "<h2>Data contracts</h2>",
        *_table(_contracts(record)),
    ]
    if systems:
        body += _model_tables(record)
    body += _outputs(run, emb is not None)
    subtitle = f"run {record.get('eoforge_run', run.name)} · engine {engine}"
    return _write(run / "report.html", _page("eoforge run report", body, subtitle))


def _model_tables(record: Mapping[str, Any]) -> list[str]:
    training = record.get("training", {})
    return [
        "<h2>Training and export</h2>",
        *_table(
            [
                {
                    "system": "model",
                    "epochs": training.get("epochs_run"),
                    "best epoch": training.get("best_epoch"),
                    "device": training.get("device"),
                    "seconds": record.get("stage_seconds", {}).get("train"),
                    "ONNX opset": training.get("onnx_opset"),
                },
                {
                    "system": "random forest",
                    "seconds": record.get("stage_seconds", {}).get("baseline"),
                },
            ]
        ),
        "<h2>Chips</h2>",
        *_table(
            [
                {"split": k, "chips": v}
                for k, v in _ordered(record.get("chip_counts", {}), _SPLIT_ORDER).items()
            ]
        ),
    ]


def _outputs(run: Path, embeddings: bool) -> list[str]:
    links = {
        "provenance.json": "provenance.json",
        "metrics.json": "metrics.json",
        "items.json": "items.json",
        "model (ONNX)": "model/model.onnx",
    }
    links.update(
        {
            f"prediction {p.stem}": f"predictions/{p.name}"
            for p in sorted(run.glob("predictions/*.tif"))
        }
    )
    if embeddings:
        for pattern in ("field/*.json", "classify/*.onnx", "classify/*.tif", "clusters/*.tif",
                        "clusters/centres.json", "similarity/*.tif", "fewshot.json"):  # fmt: skip
            links.update({p.relative_to(run).as_posix(): p.relative_to(run).as_posix()
                          for p in sorted(run.glob(pattern))})  # fmt: skip
    body = ["<h2>Outputs</h2><ul class='links'>"]
    body += [
        f"<li><a href='{html.escape(quote(href, safe='/'), quote=True)}'>{html.escape(label)}</a></li>"
        for label, href in links.items()
        # provenance.json is written right after the page
        if (run / href).exists() or href == "provenance.json"
    ]
    body.append("</ul>")
    return body


def rebuild_report(run_dir: Path) -> Path:
    """Write ``report.html`` again from a finished run folder (metrics, provenance, items).

    Raises:
        InputError: ``run_dir`` is not a finished eoforge run folder.
    """
    run = Path(run_dir)
    needed = [run / "metrics.json", run / "provenance.json"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise InputError(
            f"'{run}' is not a finished eoforge run folder (no {', '.join(missing)}); pass the "
            "folder given to --out of `eoforge run` or `eoforge demo`."
        )
    metrics = json.loads(needed[0].read_text())
    record = json.loads(needed[1].read_text())
    items_file = run / "items.json"
    items = json.loads(items_file.read_text()).get("features", []) if items_file.is_file() else []
    return write_run_report(run, metrics, record, items)
