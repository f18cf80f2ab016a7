"""The `eoforge suggest` and `eoforge label` commands (registered by :mod:`eoforge.cli`, which
turns their :class:`~eoforge.errors.EoforgeError` into a message and an exit code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["label", "suggest"]

console = Console(stderr=True)


def suggest(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (--out of run or predict).")],
    n: Annotated[int, typer.Option(help="How many points to suggest.", min=1)] = 50,
    out: Annotated[
        Path | None, typer.Option(help="GeoParquet to write (default RUN_DIR/suggestions.parquet).")
    ] = None,
    labelled: Annotated[
        Path | None, typer.Option(help="Points already labelled: skipped, and spread away from.")
    ] = None,
    spread: Annotated[
        float, typer.Option(help="Metres within which points crowd each other (0: off).", min=0)
    ] = 1000.0,
    explore: Annotated[
        float,
        typer.Option(
            help="Share of points drawn at random instead (0..1): half random, half uncertain "
            "saved the most labels in benchmarks/active_learning.py (docs/active-learning.md).",
            min=0,
            max=1,
        ),
    ] = 0.5,
) -> None:
    """Pick the N points to label next: the most uncertain pixels of the run's predictions,
    spread apart, skipping what is labelled; a GeoParquet of points (the `labels.source`
    points format, `class` to fill) and a quicklook sheet (PNG) beside it.

    **Example**

      eoforge suggest runs/demo --n 30 && eoforge label runs/demo
    """
    from eoforge.labelling.scenes import run_scenes
    from eoforge.labelling.sheet import quicklook_sheet
    from eoforge.labelling.suggest import suggest_points, write_points

    target = out or run_dir / "suggestions.parquet"
    points = suggest_points(run_dir, n, labelled=labelled, spread_m=spread, explore=explore)
    write_points(points, target)
    sheet = quicklook_sheet(run_scenes(run_dir), points, target.with_suffix(".png"))
    print(f"suggestions: {target.resolve()}\nquicklook: {sheet.resolve()}")


def label(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (--out of run or predict).")],
    out: Annotated[
        Path, typer.Option(help="Labels GeoParquet to write (kept and extended if it exists).")
    ] = Path("labels.parquet"),
    suggestions: Annotated[
        Path | None,
        typer.Option(help="Points to label (default RUN_DIR/suggestions.parquet, made if absent)."),
    ] = None,
    n: Annotated[int, typer.Option(help="Points to suggest when none are given.", min=1)] = 50,
    port: Annotated[int, typer.Option(help="Local port (0: any free one).", min=0)] = 8765,
) -> None:
    """Label points on a local map: true colour, prediction and uncertainty of the run's
    scenes, the suggested points in order; one key per class, `u` undo, `s` save. The saved
    GeoParquet is a `labels.source` of kind points for the next `eoforge run`.

    **Example**

      eoforge label runs/demo --out labels.parquet
    """
    import geopandas as gpd

    from eoforge.labelling.page import build_page
    from eoforge.labelling.scenes import run_scenes
    from eoforge.labelling.server import LabelServer
    from eoforge.labelling.suggest import suggest_points, write_points

    scenes = run_scenes(run_dir)
    source = suggestions or run_dir / "suggestions.parquet"
    if source.is_file():
        points = gpd.read_parquet(source)
    else:
        points = suggest_points(run_dir, n, explore=0.5)
        write_points(points, source)
    page = build_page(scenes, points, run_dir / "labelling")
    server = LabelServer(page.parent, points, list(scenes[0].classes), out, port)
    console.print(f"labelling page: {server.url} (Ctrl-C to stop); saves to {out.resolve()}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
