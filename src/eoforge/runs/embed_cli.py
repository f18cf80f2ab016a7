"""``eoforge embed``: embedding fields and what to do with them, from the command line.

The commands run in plain Python (the Prefect flows in ``orchestration/flows/embeddings.py``
run the same stages as deployments).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from eoforge.errors import EoforgeError, InputError

embed_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    help="Embedding fields (self-supervised encoder -> int8 Zarr) and few-label classes, "
    "clusters and similarity search on them.",
)
console = Console(stderr=True)


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except EoforgeError as exc:
        console.print(f"[red]error[/] {exc}")
        raise typer.Exit(exc.exit_code) from None


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """Stage lines, and a bar for the long stages (encoder epochs, field blocks per tile)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from eoforge.runs.progress import listening

    bar = Progress(TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=console, transient=True)  # fmt: skip
    tasks: dict[str, Any] = {}

    def show(name: str, seconds: float | None) -> None:
        if seconds is None:
            console.print(f"  [bold]{name}[/] ...")
        else:
            console.print(f"  [green]✓[/] {name} ({seconds:.1f} s)")

    def advance(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done)

    with listening(show), bar:
        yield advance


def _query(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lon, lat = (float(v) for v in value.split(","))
    except ValueError:
        raise InputError(
            f"--query '{value}' must be 'LON,LAT' in degrees, e.g. 16.5,45.6."
        ) from None
    return lon, lat


@embed_app.command("run")
def run(
    config: Annotated[Path | None, typer.Option(help="Run spec YAML (its stac and cube sections); default: the bundled sample.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/embed"),
    store: Annotated[Path | None, typer.Option(help="Store of cubes, encoders and fields (default $EOFORGE_STORE).")] = None,
    api_url: Annotated[str | None, typer.Option(help="STAC API to search (default: the spec's, else the local catalog).")] = None,
    dims: Annotated[int, typer.Option(min=2, max=512, help="Embedding dimensions.")] = 64,
    epochs: Annotated[int, typer.Option(min=1, help="Encoder training passes.")] = 8,
    clusters: Annotated[int, typer.Option(min=2, max=254, help="KMeans classes.")] = 8,
    query: Annotated[str | None, typer.Option(help="Similarity query 'LON,LAT' (default: centre of the first tile).")] = None,
    labels: Annotated[str | None, typer.Option(help="Points or polygons (GeoPackage, GeoJSON, Parquet) with a class column; default: the spec's labels.source file, else points drawn from the SCL reference.")] = None,
    class_column: Annotated[str, typer.Option(help="Column of --labels with class names.")] = "class",
    classes: Annotated[str, typer.Option(help="Comma-separated class names of the classifiers.")] = "vegetation,bare,water",
    shots: Annotated[int, typer.Option(min=1, help="Reference points per class when no label file is given.")] = 10,
    evaluate: Annotated[bool, typer.Option(help="Score few-shot curves and clusters against the SCL reference (needs 2 tiles).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
) -> None:  # fmt: skip
    """Compute an embedding field and its products in one run.

    Searches and ingests like `eoforge run` (the cube is reused from the store), trains a
    per-pixel encoder without labels (cached), writes the field (Zarr v3, int8 + per-pixel
    scale, one STAC item per tile), then a kNN and a linear probe from labelled points (ONNX,
    class COGs + items), KMeans clusters (COGs + centres), a cosine-similarity map from a query
    point, few-shot scores and a report with pictures.

    **Examples**

      eoforge embed run --out runs/embed
      eoforge embed run --labels my-points.gpkg --class-column landcover --classes crop,forest,water
      eoforge embed run --query 16.4,45.9 --clusters 12
    """

    def go() -> None:
        from eoforge.config import (
            PointLabelsSpec,
            PolygonLabelsSpec,
            RunSpec,
            default_store,
            load_run_spec,
        )
        from eoforge.runs.embed import run_embed
        from eoforge.runs.embed_stages import EmbedOptions

        spec = load_run_spec(config) if config else RunSpec()
        source = spec.labels.source
        label_file, column = labels, class_column
        if label_file is None and isinstance(source, PointLabelsSpec | PolygonLabelsSpec):
            label_file, column = str(source.path), source.class_column
        options = EmbedOptions(
            dims=dims, epochs=epochs, clusters=clusters, query=_query(query), labels=label_file,
            class_column=column, classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
            shots=shots, seed=seed,
        )  # fmt: skip
        store_path = (store or default_store()).resolve()
        console.print(f"[bold]store[/] {store_path}")
        t0 = time.perf_counter()
        with _progress() as advance:
            results = run_embed(spec, out, store_path, options, api_url, evaluate, progress=advance)
        console.print(
            f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s: {out.resolve() / 'report.html'}"
        )
        ev = results.get("evaluate", {}).get("fewshot", {}).get(str(options.shots))
        if ev:
            console.print(
                f"  {options.shots} points/class: kNN {ev['embeddings_knn_miou']:.3f}, linear "
                f"{ev['embeddings_linear_miou']:.3f}, random forest on bands {ev['rf_bands_miou']:.3f} mIoU"
            )

    _guarded(go)


@embed_app.command("check")
def check(
    field: Annotated[Path, typer.Argument(help="An embedding field store (field-*.zarr).")],
    min_coverage: Annotated[float, typer.Option(min=0.0, max=1.0, help="Least share of pixels with a vector.")] = 0.5,
) -> None:  # fmt: skip
    """Check a field's contract: finite, unit-length vectors, enough coverage (exit 3 if not)."""

    def go() -> None:
        from eoforge.embeddings.field import check_field

        for tile, row in check_field(field, min_coverage).items():
            print(
                f"{tile}: coverage {row['coverage']:.1%}, max |length - 1| {row['max_unit_error']:.4f}"
            )

    _guarded(go)


@embed_app.command("publish")
def publish(
    field: Annotated[Path, typer.Argument(help="An embedding field store (field-*.zarr).")],
    out: Annotated[Path, typer.Option(help="Folder for the static STAC collection of COGs.")],
) -> None:  # fmt: skip
    """Publish a field as a STAC collection of D-band int8 COGs (one item per tile), the shape
    of served embedding collections (AlphaEarth-style: vector = value / 127)."""

    def go() -> None:
        from eoforge.embeddings.collection import publish_collection

        collection = publish_collection(field, out)
        print(f"wrote {collection}")

    _guarded(go)


_FIELD = Annotated[str, typer.Option("--field", help="An embedding field store (field-*.zarr, from `embed run`) or an embedding cube (from `embed ingest`).")]  # fmt: skip


def _product(out: Path, name: str, fn: Callable[[Path], dict[str, object]]) -> None:
    from eoforge.runs.embed import run_product

    with _progress():
        run_product(out, name, fn)
    console.print(f"[bold green]done[/]: {out.resolve()}")


@embed_app.command("classify")
def classify(
    field: _FIELD,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/embed-classify"),
    labels: Annotated[str | None, typer.Option(help="Points or polygons with a class column.")] = None,
    class_column: Annotated[str, typer.Option(help="Column of --labels with class names.")] = "class",
    classes: Annotated[str, typer.Option(help="Comma-separated class names.")] = "vegetation,bare,water",
    cube: Annotated[str | None, typer.Option(help="Without --labels: the field's cube, to draw points from its SCL reference.")] = None,
    shots: Annotated[int, typer.Option(min=1, help="Reference points per class (with --cube).")] = 10,
) -> None:  # fmt: skip
    """kNN and linear probe from labelled points on a field -> ONNX, class COGs + STAC items.

    **Example**

      eoforge embed classify --field STORE/embeddings/field-....zarr --labels points.gpkg
    """

    def go() -> None:
        from eoforge.runs.embed_stages import EmbedOptions, stage_classify

        names = tuple(c.strip() for c in classes.split(",") if c.strip())
        options = EmbedOptions(labels=labels, class_column=class_column, classes=names, shots=shots)
        _product(out, "classify", lambda d: stage_classify(cube, field, d, options))

    _guarded(go)


@embed_app.command("clusters")
def clusters(
    field: _FIELD,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/embed-clusters"),
    k: Annotated[int, typer.Option(min=2, max=254, help="KMeans classes.")] = 8,
) -> None:  # fmt: skip
    """MiniBatchKMeans over a field -> cluster COGs + STAC items, centres.json."""

    def go() -> None:
        from eoforge.runs.embed_stages import EmbedOptions, stage_clusters

        _product(out, "clusters", lambda d: stage_clusters(field, d, EmbedOptions(clusters=k)))

    _guarded(go)


@embed_app.command("similarity")
def similarity(
    field: _FIELD,
    query: Annotated[str, typer.Option(help="Query point 'LON,LAT' in degrees.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/embed-similarity"),
) -> None:  # fmt: skip
    """Cosine similarity of every pixel to the vector at a point -> float32 COGs + STAC items."""

    def go() -> None:
        from eoforge.runs.embed_stages import EmbedOptions, stage_similarity

        options = EmbedOptions(query=_query(query))
        _product(out, "similarity", lambda d: stage_similarity(field, d, options))

    _guarded(go)


@embed_app.command("ingest")
def ingest(
    api_url: Annotated[str, typer.Option(help="STAC API serving the embedding collection.")],
    collection: Annotated[str, typer.Option(help="Collection id whose items carry one D-band 'embedding' COG.")],
    out: Annotated[Path, typer.Option(help="Cube store to write (a new *.zarr path).")],
    bbox: Annotated[str | None, typer.Option(help="Search box 'W,S,E,N' in degrees (default: all).")] = None,
    datetime: Annotated[str | None, typer.Option(help="Search dates, e.g. 2024 or 2023-01-01/2023-12-31 (default: all).")] = None,
) -> None:  # fmt: skip
    """Load an embedding collection (one D-band int8 or float COG asset 'embedding' per item)
    through odc-stac into a cube: one (time, channel, y, x) variable per tile, chunk by chunk.
    The products (classify, clusters, similarity) take the cube as --field."""

    def go() -> None:
        import pystac_client

        from eoforge.embeddings.collection import ingest_collection

        box = [float(v) for v in bbox.split(",")] if bbox else None
        search = pystac_client.Client.open(api_url).search(
            collections=[collection], bbox=box, datetime=datetime
        )
        items = [it.to_dict() for it in search.items()]
        for tile, row in ingest_collection(items, out).items():
            print(
                f"{tile}: {row['dims']} x {row['dtype']}, {row['slices']} slice(s), "
                f"coverage {row['coverage']:.1%}"
            )

    _guarded(go)
