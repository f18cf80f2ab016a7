"""The ``eoforge`` command line: ``demo``, ``run``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from eoforge.config import RunSpec, check_api_url, default_store, load_run_spec
from eoforge.errors import EoforgeError, InputError, exit_code_for
from eoforge.io.redact import install_log_redaction, redact

# The temporary Prefect server eoforge starts for local runs does not phone home (air-gapped
# production machines logged an ERROR per run for the failed telemetry call); set the variable
# to true to opt back in.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# no local variables in tracebacks: they may hold credentials or signed URLs
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False
)
console = Console(stderr=True)


def _run_pipeline(
    spec: RunSpec, out: Path, api_url: str | None, orchestrate: bool, store: Path | None
) -> dict[str, Any]:
    from eoforge.runs.pipeline import check_run_places, run_plain

    store_path = (store or default_store()).resolve()
    console.print(f"[bold]store[/] {store_path}")
    check_run_places(out, store_path)  # before Prefect starts: a bad place fails in a second
    if orchestrate:
        from eoforge.io.quiet_logs import final_errors_to_file
        from flows.pipeline import pipeline_flow

        log = final_errors_to_file(store_path / "logs")
        try:
            return pipeline_flow(spec, str(out), str(store_path), api_url)
        except EoforgeError as exc:
            if log.exists():
                exc.add_note(f"Prefect's log of this run, with the traceback: {log}")
            raise
    return run_plain(
        spec,
        out,
        store_path,
        api_url,
        on_stage=lambda n, s: console.print(f"  [green]✓[/] {n} ({s:.1f} s)"),
    )


def _summarise(results: dict[str, Any], out: Path, seconds: float) -> None:
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
    """The whole chain on the bundled Sentinel-2 sample, through a local STAC API."""

    def go() -> None:
        spec = RunSpec()
        if train_seconds is not None:
            spec = spec.model_copy(
                update={"train": spec.train.model_copy(update={"max_seconds": train_seconds})}
            )
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, None, not plain, store)
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
    store: Annotated[
        Path | None, typer.Option(help="Store of cubes/chips/models (default $EOFORGE_STORE).")
    ] = None,
) -> None:
    """Run the pipeline described by a YAML run spec."""

    def go() -> None:
        spec = load_run_spec(config)
        if api_url is not None:
            try:
                check_api_url(api_url, "--api-url")
            except ValueError as exc:
                raise InputError(f"{exc}.") from None
        t0 = time.perf_counter()
        results = _run_pipeline(spec, out, api_url, not plain, store)
        _summarise(results, out, time.perf_counter() - t0)

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


def main() -> None:
    """Console-script entry point."""
    install_log_redaction()
    app()


if __name__ == "__main__":
    main()
