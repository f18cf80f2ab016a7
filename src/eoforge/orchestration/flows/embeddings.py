"""Embedding flows (deployments `eoforge-embed/*` on the cpu pool): the whole embed run, and
one flow per product over a stored field (classes, clusters, similarity)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from eoforge.config import RunSpec, default_store
from eoforge.runs.embed import run_embed, run_product
from eoforge.runs.embed_stages import (
    EmbedOptions,
    stage_classify,
    stage_clusters,
    stage_similarity,
)


def _as_task(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One stage as a Prefect task (stored products are cached by the store, not by Prefect)."""
    return task(name=f"embed-{name}", cache_policy=NO_CACHE)(fn)()  # type: ignore[no-any-return]


def _options(**kw: Any) -> EmbedOptions:
    lon, lat = kw.pop("query_lon"), kw.pop("query_lat")
    query = (lon, lat) if lon is not None and lat is not None else None
    return EmbedOptions(query=query, classes=tuple(kw.pop("classes")), **kw)


@flow(name="eoforge-embed", log_prints=True)
def embed_flow(
    spec: RunSpec = RunSpec(),  # noqa: B008 - frozen model default, shown in the UI form
    out: str = "runs/embed",
    store: str | None = None,
    api_url: str | None = None,
    dims: int = 64,
    epochs: int = 8,
    clusters: int = 8,
    query_lon: float | None = None,
    query_lat: float | None = None,
    labels: str | None = None,
    class_column: str = "class",
    classes: list[str] = ["vegetation", "bare", "water"],  # noqa: B006 - shown in the UI form
    shots: int = 10,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Search, ingest, encoder, field, classes, clusters, similarity, scores and report."""
    options = _options(dims=dims, epochs=epochs, clusters=clusters, query_lon=query_lon,
                       query_lat=query_lat, labels=labels, class_column=class_column,
                       classes=classes, shots=shots)  # fmt: skip
    store_p = Path(store or default_store()).resolve()
    results = run_embed(spec, Path(out), store_p, options, api_url, evaluate, call=_as_task)
    return {"out": str(Path(out).resolve()), "field": results["field"]["field_uri"]}


def _product(out: str, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    return run_product(Path(out), name, fn, call=_as_task)


@flow(name="eoforge-embed-classify", log_prints=True)
def embed_classify_flow(
    field_uri: str, out: str = "runs/embed-classify", labels: str | None = None,
    cube_uri: str | None = None,
    class_column: str = "class",
    classes: list[str] = ["vegetation", "bare", "water"],  # noqa: B006 - shown in the UI form
    shots: int = 10,
) -> dict[str, Any]:  # fmt: skip
    """kNN + linear probe on a stored field -> ONNX, class COGs + STAC items."""
    options = EmbedOptions(labels=labels, class_column=class_column, classes=tuple(classes),
                           shots=shots)  # fmt: skip
    return _product(out, "classify", lambda d: stage_classify(cube_uri, field_uri, d, options))


@flow(name="eoforge-embed-clusters", log_prints=True)
def embed_clusters_flow(
    field_uri: str, out: str = "runs/embed-clusters", clusters: int = 8
) -> dict[str, Any]:
    """MiniBatchKMeans on a stored field -> cluster COGs + items, centres."""
    options = EmbedOptions(clusters=clusters)
    return _product(out, "clusters", lambda d: stage_clusters(field_uri, d, options))


@flow(name="eoforge-embed-similarity", log_prints=True)
def embed_similarity_flow(
    field_uri: str, lon: float, lat: float, out: str = "runs/embed-similarity"
) -> dict[str, Any]:
    """Cosine similarity to the vector at (lon, lat) -> similarity COGs + items."""
    options = EmbedOptions(query=(lon, lat))
    return _product(out, "similarity", lambda d: stage_similarity(field_uri, d, options))
