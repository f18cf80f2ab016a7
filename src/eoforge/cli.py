"""eoforge: STAC imagery -> Zarr cube -> chips -> PyTorch -> ONNX -> inference, with Prefect.

Start with `eoforge demo` (the whole chain on the bundled Sentinel-2 sample, a few minutes on a
laptop CPU), open the report it prints, then `eoforge run --config my.yaml` for your own area.
Every command has --help. Runs go through Prefect (a temporary local server) unless --plain.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from eoforge.config import RunSpec, check_api_url, default_store, load_run_spec
from eoforge.errors import EoforgeError, InputError, exit_code_for
from eoforge.io.redact import install_log_redaction, redact
from eoforge.orchestration.local_server import apply_local_defaults, server_start_error

apply_local_defaults()  # before Prefect reads its settings: no telemetry, a longer first start

# no local variables in tracebacks: they may hold credentials or signed URLs
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)


def _register_embed() -> None:
    from eoforge.runs.embed_cli import embed_app

    app.add_typer(embed_app, name="embed")


_register_embed()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"eoforge {version('eoforge')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """eoforge command line."""


@contextlib.contextmanager
def _stage_progress() -> Iterator[None]:
    """Show each stage while it runs (a spinner with the elapsed time) and a line when it ends.

    Training draws its own bar (epochs, loss, mIoU), so no spinner runs beside it.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from eoforge.runs.progress import listening

    live: dict[str, Progress] = {}

    def show(name: str, seconds: float | None) -> None:
        if seconds is None and not console.is_terminal:
            return  # a log file gets the ✓ lines only
        if seconds is None:
            if name == "train":
                console.print("  [bold]train[/] (progress bar below)")
                return
            bar = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            bar.add_task(name, total=None)
            bar.start()
            live[name] = bar
            return
        bar_ = live.pop(name, None)
        if bar_ is not None:
            bar_.stop()
        console.print(f"  [green]✓[/] {name} ({seconds:.1f} s)")

    try:
        with listening(show):
            yield
    finally:
        for bar in live.values():
            bar.stop()


def _run_pipeline(
    spec: RunSpec,
    out: Path,
    api_url: str | None,
    orchestrate: bool,
    store: Path | None,
    stages: list[str] | None = None,
) -> dict[str, Any]:
    from eoforge.runs.pipeline import check_run_places, plan_stages, run_plain

    plan = plan_stages(stages)  # an unknown stage fails here, before anything starts
    store_path = (store or default_store()).resolve()
    console.print(f"[bold]store[/] {store_path}")
    if stages is not None:
        console.print(f"[bold]stages[/] {', '.join(plan)}")
    check_run_places(out, store_path)  # before Prefect starts: a bad place fails in a second
    with _stage_progress():
        if orchestrate:
            from eoforge.io.quiet_logs import final_errors_to_file
            from eoforge.orchestration.flows.pipeline import pipeline_flow

            log = final_errors_to_file(store_path / "logs")
            try:
                return pipeline_flow(spec, str(out), str(store_path), api_url, stages=stages)
            except EoforgeError as exc:
                if log.exists():
                    exc.add_note(f"Prefect's log of this run, with the traceback: {log}")
                raise
            except RuntimeError as exc:  # Prefect's temporary server did not start in time
                if (err := server_start_error(exc)) is None:
                    raise
                raise err from None
        return run_plain(spec, out, store_path, api_url, stages=stages)


def _summarise(results: dict[str, Any], out: Path, seconds: float) -> None:
    if "summary" in results:  # selected stages: no evaluation, no report
        for name, uri in results["summary"]["products"].items():
            console.print(f"[bold]{name:<9}[/] {uri}")
        console.print(f"all data contracts passed; wall time {seconds:.1f} s")
        print(f"run: {out.resolve()} (provenance.json)")
        return
    m = results["evaluate"]["metrics"]
    console.print(
        f"[bold]model[/]     mIoU {m['miou']:.3f}  pixel accuracy {m['pixel_accuracy']:.3f}\n"
        f"[bold]baseline[/]  mIoU {m['baseline_miou']:.3f}  pixel accuracy {m['baseline_pixel_accuracy']:.3f}\n"
        f"ONNX parity max |diff| {results['train']['parity_max_abs_diff']:.2e}\n"
        f"all data contracts passed; wall time {seconds:.1f} s"
    )
    print(f"report: {out.resolve() / 'report.html'}")


def _fail(exc: EoforgeError) -> typer.Exit:
    notes = "".join(f"\n{n}" for n in getattr(exc, "__notes__", ()))
    # soft wrap: paths and names in the message stay whole (copyable, greppable)
    console.print(
        f"[bold red]error ({type(exc).__name__}):[/] {redact(str(exc))}{notes}",
        soft_wrap=True,
        markup=True,
    )
    return typer.Exit(exit_code_for(exc))


def _guarded(fn: Any) -> None:
    from eoforge.io.writable import is_environment_error, os_error_as_eoforge

    try:
        fn()
    except EoforgeError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        if not is_environment_error(exc):
            raise
        raise _fail(
            os_error_as_eoforge(exc, "the run folder (--out) or the store (--store)")
        ) from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/demo"),
    plain: Annotated[bool, typer.Option(help="Run without Prefect (plain Python).")] = False,
    train_seconds: Annotated[
        float | None, typer.Option(help="Override the training time budget (seconds).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Store of cubes/chips/models (default $EOFORGE_STORE).")
    ] = None,
) -> None:
    """The whole chain on the bundled Sentinel-2 sample, through a local STAC API.

    Searches the 10 bundled items, builds a Zarr cube, cuts chips, trains a small U-Net (and a
    random-forest baseline), exports it to ONNX, predicts every scene and writes a report that
    compares both models. Products are cached in the store: a second run reuses them.

    **Examples**

      eoforge demo                              # through Prefect, output in runs/demo
      eoforge demo --plain --train-seconds 30   # plain Python, quicker training
    """

    def go() -> None:
        spec = RunSpec()
        if train_seconds is not None:
            spec = spec.model_copy(
                update={"train": spec.train.model_copy(update={"max_seconds": train_seconds})}
            )
        _check_args(None, store)
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, None, not plain, store)
        _summarise(results, out, time.perf_counter() - t0)

    _guarded(go)


def _check_args(api_url: str | None, store: Path | None = None) -> None:
    from eoforge.runs.pipeline import refuse_url

    refuse_url(store or "", "--store")  # before a Path option's 's3:/b' becomes a folder
    if api_url is not None:
        try:
            check_api_url(api_url, "--api-url")
        except ValueError as exc:
            raise InputError(f"{exc}.") from None


def _stage_list(value: str | None) -> list[str] | None:
    return None if value is None else [s for s in value.split(",") if s.strip()]


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option(help="Run spec YAML (see examples/configs/); default: the demo's spec."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Run folder to write.")] = Path("runs/latest"),
    stages: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated stages to run (search, ingest, chips, train, baseline, infer, "
            "evaluate, track, report); the stages they need run too, stored products are "
            "reused. Default: all."
        ),
    ] = None,
    api_url: Annotated[
        str | None, typer.Option(help="STAC API URL (overrides the config).")
    ] = None,
    plain: Annotated[bool, typer.Option(help="Run without Prefect (plain Python).")] = False,
    store: Annotated[
        Path | None, typer.Option(help="Store of cubes/chips/models (default $EOFORGE_STORE).")
    ] = None,
) -> None:
    """Run the pipeline (or some of its stages) described by a YAML run spec.

    The run folder gets the predictions, metrics.json, report.html and provenance.json; it is
    published only when every stage and data contract passed. With --stages, only those stages
    (and what they need) run and the folder holds provenance.json with their products.

    **Examples**

      eoforge run --config examples/configs/polygons.yaml --out runs/polygons
      eoforge run --stages ingest,chips --plain     # cube and chips only
    """

    def go() -> None:
        spec = load_run_spec(config) if config is not None else RunSpec()
        _check_args(api_url, store)
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, api_url, not plain, store, _stage_list(stages))
        _summarise(results, out, time.perf_counter() - t0)

    _guarded(go)


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished run folder (the --out of demo or run).")
    ],
) -> None:
    """Rebuild report.html of a finished run from its folder (metrics, provenance, items).

    Useful after upgrading eoforge, or for a run folder someone mailed you. The pictures are
    referenced relative to the page, so the folder can be moved or zipped.

    **Example**

      eoforge report runs/demo
    """

    def go() -> None:
        from eoforge.runs.report_page import rebuild_report

        print(f"report: {rebuild_report(run_dir).resolve()}")

    _guarded(go)


@app.command()
def watch(
    config: Annotated[
        Path | None, typer.Option(help="Run spec YAML (default: the demo's spec).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder the predictions accumulate in.")] = Path(
        "runs/watch"
    ),
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.0)] = 60.0,
    polls: Annotated[
        int, typer.Option(help="Stop after this many polls (0: until Ctrl-C).", min=0)
    ] = 0,
    emit_existing: Annotated[
        bool,
        typer.Option(help="On the first poll, treat every item found as landed (replay)."),
    ] = False,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model folder (default: the store's production model).")
    ] = None,
    api_url: Annotated[
        str | None, typer.Option(help="STAC API URL (overrides the config).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Store of cubes/models (default $EOFORGE_STORE).")
    ] = None,
) -> None:
    """Watch the STAC search for new or re-published items and predict each one, locally.

    The same loop as the deployed watch -> infer deployments, without Prefect or deploying:
    poll the search, keep a cursor in the store (so a restart does not replay), and run
    inference with the production model for each landed item. A new watcher starts from
    "now" unless --emit-existing.

    **Examples**

      eoforge watch --interval 30                     # until Ctrl-C
      eoforge watch --polls 1 --emit-existing         # predict every item found, once
    """

    def go() -> None:
        from eoforge.runs.watch_local import watch_loop

        spec = load_run_spec(config) if config is not None else RunSpec()
        _check_args(api_url, store)

        def said(poll: int, landed: list[str], seconds: float) -> None:
            what = ", ".join(landed) if landed else "nothing new"
            console.print(f"poll {poll}: {what} ({seconds:.1f} s)", soft_wrap=True)

        with _stage_progress():
            watch_loop(
                spec,
                out,
                (store or default_store()).resolve(),
                api_url=api_url,
                interval_s=interval,
                polls=polls or None,
                emit_existing=emit_existing,
                model_dir=model_dir,
                on_poll=said,
            )
        print(f"predictions: {out.resolve() / 'predictions'}")

    _guarded(go)


@app.command()
def predict(
    model: Annotated[
        str, typer.Option(help="Model folder (`model/` of a run, a stored model) or s3:// prefix.")
    ],
    config: Annotated[
        Path, typer.Option(help="Run spec YAML: its `stac` (catalog, AOI, dates) and `cube`.")
    ],
    out: Annotated[
        str, typer.Option(help="Folder or s3:// prefix to write the predictions into.")
    ] = "runs/predict",
    api_url: Annotated[
        str | None, typer.Option(help="STAC API URL (overrides the config).")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Store of cubes (default $EOFORGE_STORE).")
    ] = None,
) -> None:
    """Apply a trained model to every item the spec's search returns, over its area of
    interest: a COG + STAC item per item in OUT/predictions/, nothing trained.

    The model's bands and classes are used; the spec's `stac` says where and when, `cube` on
    which grid. A cube in other units than the model was trained on is refused.

    **Examples**

      eoforge predict --model runs/demo/model --config aoi.yaml --out runs/aoi
      eoforge predict --model s3://models/v3 --config aoi.yaml --out s3://preds/aoi  # AWS_* env
    """

    def go() -> None:
        from eoforge.runs.predict import run_predict

        spec = load_run_spec(config)
        _check_args(api_url, store)
        store_path = (store or default_store()).resolve()
        t0 = time.perf_counter()
        with _stage_progress():
            results = run_predict(spec, model, out, store_path, api_url)
        n = len(results["infer"]["predictions"])
        console.print(
            f"{n} item(s) predicted at {results['infer']['mpx_per_s']:.2f} Mpx/s; "
            f"wall time {time.perf_counter() - t0:.1f} s",
            soft_wrap=True,
        )
        where = out.rstrip("/") if "://" in out else Path(out).resolve()
        print(f"predictions: {where}/predictions")

    _guarded(go)


@app.command()
def deploy(
    gpu_pool_type: Annotated[
        str, typer.Option(help="Type of the gpu work pool: process (local) or kubernetes.")
    ] = "process",
    name: Annotated[list[str] | None, typer.Option(help="Deploy only these deployments.")] = None,
) -> None:
    """Create the cpu/gpu work pools and register deployments/prefect.yaml on PREFECT_API_URL."""

    def go() -> None:
        from eoforge.ops.deploy import apply_deployments

        print(apply_deployments(gpu_pool_type, names=name or ()))

    _guarded(go)


@app.command("reap-zombies")
def reap_zombies_command(
    api_url: Annotated[
        str | None, typer.Option(help="Prefect API URL (default $PREFECT_API_URL).")
    ] = None,
    stale_after: Annotated[
        float, typer.Option(help="Seconds without heartbeat (or lock touch) that mean dead.")
    ] = 120.0,
    store: Annotated[
        Path | None, typer.Option(help="Store whose runs/ folder holds run locks.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only list the zombies.")] = False,
) -> None:
    """Mark flow runs a crash left RUNNING as CRASHED (see docs/reliability.md)."""

    def go() -> None:
        from eoforge.ops.zombies import reap_zombies

        url = api_url or os.environ.get("PREFECT_API_URL")
        if not url:
            raise InputError("no Prefect API: pass --api-url or set PREFECT_API_URL.")
        locks = [(store or default_store()) / "runs"]
        for z in reap_zombies(url, stale_after_s=stale_after, lock_dirs=locks, dry_run=dry_run):
            verb = "would mark" if dry_run else "marked"
            print(f"{verb} {z.flow_run_id} ({z.name}) crashed: {z.reason}")

    _guarded(go)


def _guarded_command(fn: Any) -> Any:
    """``fn`` as a command whose eoforge errors print and exit like the others'."""
    import functools

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        _guarded(lambda: fn(*args, **kwargs))

    return command


def _register_labelling() -> None:
    from eoforge.labelling import commands

    for fn in (commands.suggest, commands.label):
        app.command()(_guarded_command(fn))


_register_labelling()


def main() -> None:
    """Console-script entry point."""
    install_log_redaction()
    app()


if __name__ == "__main__":
    main()
