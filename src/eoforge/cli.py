"""The ``eoforge`` command line: ``demo``, ``run``."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from eoforge.config import RunSpec, load_run_spec
from eoforge.errors import EoforgeError, exit_code_for

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)


def _run_pipeline(
    spec: RunSpec, out: Path, api_url: str | None, orchestrate: bool
) -> dict[str, Any]:
    from eoforge.pipeline import check_out_dir, run_plain
    from eoforge.stac import LocalStacServer, prepare_served_catalog
    from eoforge.storage import clean_stale_staging, staged_dir

    out = out.resolve()
    check_out_dir(out)
    clean_stale_staging(out.parent)
    with tempfile.TemporaryDirectory(prefix="eoforge-stac-") as td:
        server: LocalStacServer | None = None
        if api_url is None and spec.stac.api_url is None:
            files = prepare_served_catalog(spec.stac.catalog_dir, Path(td))
            server = LocalStacServer(files, log_path=Path(td) / "rustac.log").start()
            api_url = server.url
            console.print(f"[bold]STAC API[/] rustac serving {len(files) - 1} items at {api_url}")
        url = api_url or spec.stac.api_url
        assert url is not None
        try:
            with staged_dir(out) as run_dir:
                if orchestrate:
                    from flows.pipeline import pipeline_flow

                    return pipeline_flow(spec, url, str(run_dir), str(out))
                return run_plain(
                    spec,
                    url,
                    run_dir,
                    on_stage=lambda n, s: console.print(f"  [green]✓[/] {n} ({s:.1f} s)"),
                    final_dir=out,
                )
        finally:
            if server is not None:
                server.stop()


def _summarise(results: dict[str, Any], out: Path, seconds: float) -> None:
    m = results["evaluate"]["metrics"]
    console.print(
        f"[bold]model[/]     mIoU {m['miou']:.3f}  pixel accuracy {m['pixel_accuracy']:.3f}\n"
        f"[bold]baseline[/]  mIoU {m['baseline_miou']:.3f}  pixel accuracy {m['baseline_pixel_accuracy']:.3f}\n"
        f"ONNX parity max |diff| {results['export']['parity_max_abs_diff']:.2e}\n"
        f"all data contracts passed; wall time {seconds:.1f} s"
    )
    print(f"report: {out.resolve() / 'report.html'}")


def _guarded(fn: Any) -> None:
    try:
        fn()
    except EoforgeError as exc:
        console.print(f"[bold red]error ({type(exc).__name__}):[/] {exc}")
        raise typer.Exit(exit_code_for(exc)) from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/demo"),
    plain: Annotated[bool, typer.Option(help="Run without Prefect (plain Python).")] = False,
    train_seconds: Annotated[
        float | None, typer.Option(help="Override the training time budget (seconds).")
    ] = None,
) -> None:
    """The whole chain on the bundled Sentinel-2 sample, through a local STAC API."""

    def go() -> None:
        spec = RunSpec()
        if train_seconds is not None:
            spec = spec.model_copy(
                update={"train": spec.train.model_copy(update={"max_seconds": train_seconds})}
            )
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, None, orchestrate=not plain)
        _summarise(results, out, time.perf_counter() - t0)

    _guarded(go)


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="Run spec YAML (see examples/configs/).")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/latest"),
    api_url: Annotated[
        str | None, typer.Option(help="STAC API URL (overrides the config).")
    ] = None,
    plain: Annotated[bool, typer.Option(help="Run without Prefect (plain Python).")] = False,
) -> None:
    """Run the pipeline described by a YAML run spec."""

    def go() -> None:
        spec = load_run_spec(config)
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, api_url, orchestrate=not plain)
        _summarise(results, out, time.perf_counter() - t0)

    _guarded(go)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
