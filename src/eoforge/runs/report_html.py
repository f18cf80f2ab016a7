"""HTML pieces of the run report (cells, tables, figures) and its Embeddings section.

Shared by :mod:`eoforge.runs.report_page`; kept apart so that each module stays small.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["embedding_cards", "embeddings_section", "esc", "figure", "fmt", "table"]


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def esc(value: Any) -> str:
    return html.escape(fmt(value), quote=True)


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["<p>(none)</p>"]
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    out = ["<table><thead><tr>", *(f"<th>{esc(c)}</th>" for c in columns), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        out += [f"<td>{esc(row.get(c))}</td>" for c in columns]
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _relative(path: Path, start: Path) -> str:
    """``path`` as a URL relative to the page's folder ``start``; a relative ``path`` is taken
    as relative to that folder already (never to the process's working directory)."""
    path = Path(path)
    if not path.is_absolute():
        path = start / path
    rel = Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    return html.escape(quote(rel, safe="/"), quote=True)


def figure(caption: str, png: Path, folder: Path) -> str:
    return (
        f"<figure><img src='{_relative(png, folder)}' alt='{html.escape(caption, quote=True)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


#: The few-shot methods of an embed run: (key in the curves, column).
_FEWSHOT = (
    ("embeddings_knn", "kNN on embeddings"),
    ("embeddings_linear", "linear probe on embeddings"),
    ("rf_bands", "random forest on median bands"),
)


def _fewshot_rows(curves: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n in sorted(curves, key=int):
        row: dict[str, Any] = {"points per class": int(n)}
        for key, label in _FEWSHOT:
            row[label] = f"{curves[n][f'{key}_miou']:.3f} ± {curves[n][f'{key}_miou_std']:.3f}"
        rows.append(row)
    return rows


def embedding_cards(emb: Mapping[str, Any]) -> list[tuple[str, str]]:
    curves = emb.get("fewshot") or {}
    n = "10" if "10" in curves else next(iter(sorted(curves, key=int)), None)
    if n is None:
        return []
    row = curves[n]
    return [
        (f"{row['embeddings_knn_miou']:.3f}", f"mIoU, kNN on embeddings ({n} points/class)"),
        (f"{row['rf_bands_miou']:.3f}", f"mIoU, random forest on bands ({n} points/class)"),
    ]


def embeddings_section(run: Path, emb: Mapping[str, Any]) -> list[str]:
    """The section of an embed run: the field, its pictures, the few-shot scores."""
    classify = emb.get("classify") or {}
    parity = [classify.get(k, {}).get("parity") for k in ("knn", "linear")]
    facts = [
        ("dimensions", emb.get("dims")),
        ("tiles", emb.get("tiles")),
        ("KMeans clusters", emb.get("clusters")),
        ("classifier labels", classify.get("labels")),
        ("labelled points", classify.get("points")),
        ("classes", classify.get("classes")),
        (
            "ONNX label agreement (kNN, linear)",
            parity if any(p is not None for p in parity) else None,
        ),
        ("similarity query tile", emb.get("similarity_query_tile")),
    ]
    out = ["<h2>Embeddings</h2><table class='inputs'><tbody>"]
    out += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in facts if v is not None]
    out.append("</tbody></table>")
    for group in emb.get("figures") or []:
        present = [(str(c), run / str(p)) for c, p in group if (run / str(p)).is_file()]
        if present:
            out.append("<div class='pair trio'>" if len(present) == 3 else "<div class='pair'>")
            out += [figure(caption, png, run) for caption, png in present]
            out.append("</div>")
    if emb.get("fewshot"):
        out.append(
            f"<h3>Few-shot mIoU: points drawn on {esc(emb.get('train_tile'))}, scored on "
            f"{esc(emb.get('test_tile'))} (mean ± std over seeds)</h3>"
        )
        out += table(_fewshot_rows(emb["fewshot"]))
    return out
