"""Event latency: from a STAC item becoming visible in the API to its prediction being written.

Real services on loopback, as in production: a ``prefect server start`` with the eoforge
deployments (``eoforge deploy``) and one process worker on the ``cpu`` pool with a warm engine
beside it (:mod:`eoforge.orchestration.warm_engine`; ``--cold`` for none), a ``rustac serve``
STAC API on a fixed port. The watch deployment runs on its schedule (one run a minute, each
polling every ``--interval`` seconds for the deployment's ``run_seconds``); the infer
deployment's event trigger runs inference for each landed item with the production model.

1. serve the first three dates (6 items) and train a small production model (plain Python:
   search, ingest, chips, train; the setup is not timed);
2. patch the deployments' parameters (this API, store, output folder, the watch's poll
   interval), switch the infer schedule off and wait until the watcher recorded the six items;
3. restart the STAC API on the same port with all ten items: ``t0`` is when it answers again;
4. poll ``out/predictions`` until each of the four new items has its COG and STAC item; the
   latency of an item is the time both files were first seen, minus ``t0``.

Per item it also splits the latency with the Prefect API: ``detect`` (t0 -> the landed event),
``trigger`` (event -> infer run created; split into ``send``, the event's ``occurred`` -> the
server's ``received``, and ``automate``, received -> run created), ``queue`` (created -> running: worker poll + process
start), ``run`` (the infer flow run) and ``visible`` (run end -> files seen; negative when the
files appear before the run reports completion).

    python -m benchmarks.event_latency --json benchmarks/results/event_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from eoforge.config import BUNDLED_CATALOG, RunSpec
from eoforge.errors import TransientError
from eoforge.stac.server import LocalStacServer, prepare_served_catalog
from eoforge.stac.watch import EVENT_NAME
from eoforge.testing import PrefectServer, free_port, prefect_services

FIRST_DATES = ("2023-08-10", "2023-08-13", "2023-08-15")
SPEC: dict[str, Any] = {
    "train": {"max_seconds": 15, "max_epochs": 2, "rf_n_estimators": 10, "rf_train_pixels": 20000}
}


def _early(item: dict[str, Any]) -> bool:
    return str(item["properties"]["datetime"])[:10] in FIRST_DATES


def _serve(work: Path, port: int, include: Any = None) -> tuple[LocalStacServer, list[str]]:
    files = prepare_served_catalog(BUNDLED_CATALOG, work, include)
    server = LocalStacServer(files, port=port, log_path=work / "rustac.log")
    deadline = time.monotonic() + 30
    while True:  # the previous server's socket may linger a moment
        try:
            server.start()
            break
        except TransientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return server, [f.stem for f in files[1:]]


def _train_production_model(spec: RunSpec, api_url: str, work: Path, store: Path) -> str:
    """Search, ingest, chips, train (no Prefect); point the store's production model at it."""
    from eoforge.io.atomic import write_json_atomic
    from eoforge.runs.stages_data import stage_chips, stage_ingest, stage_search
    from eoforge.runs.stages_model import stage_train
    from eoforge.runs.store import PRODUCTION_POINTER

    work.mkdir(parents=True, exist_ok=True)
    s = stage_search(spec, api_url, work)
    c = stage_ingest(spec, s["items_uri"], str(store), s["keys"]["cube"])
    ch = stage_chips(spec, c["cube_uri"], str(store), s["keys"]["chips"])
    m = stage_train(spec, ch["chips_uri"], str(store), s["keys"]["model"])
    write_json_atomic(
        store / PRODUCTION_POINTER,
        {"promoted": True, "model_dir": m["model_dir"], "run": "benchmarks.event_latency"},
    )
    return str(m["model_dir"])


class _WatchDriver:
    """Start a watch run every ``interval`` seconds through the REST API (a client-side schedule)."""

    def __init__(self, prefect: PrefectServer, interval: float) -> None:
        # ``interval``: the watch deployment's schedule interval (each run polls in a loop)
        self.prefect, self.interval = prefect, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.prefect.run("eoforge-watch/watch")
            except OSError:  # the server is going away
                return
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def _version(dist: str) -> str:
    """The version in use (for SQLAlchemy the imported one: PYTHONPATH may override the venv's)."""
    if dist == "sqlalchemy":
        import sqlalchemy

        return str(sqlalchemy.__version__)
    from importlib.metadata import version

    return version(dist)


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _breakdown(
    prefect: PrefectServer, out: Path, items: list[str], t0: float, seen: dict[str, float]
) -> dict[str, dict[str, float | None]]:
    """Where each item's latency went, from the landed events and the infer flow runs."""
    body = {
        "filter": {
            "occurred": {
                "since": datetime.fromtimestamp(t0 - 120).astimezone().isoformat(),
                "until": datetime.fromtimestamp(time.time() + 60).astimezone().isoformat(),
            },
            "event": {"name": [EVENT_NAME]},
        },
        "limit": 50,
    }
    events = prefect.request("POST", "/events/filter", body)["events"]
    first_event: dict[str, dict[str, Any]] = {}
    for e in sorted(events, key=lambda e: e["occurred"]):
        first_event.setdefault(e["payload"]["item_id"], e)
    runs = [
        r
        for r in prefect.flow_runs("eoforge-infer/infer")
        if r["parameters"].get("out") == str(out)
    ]
    result: dict[str, dict[str, float | None]] = {}
    for item in items:
        ev = first_event.get(item)
        mine = [
            r
            for r in runs
            if r["parameters"].get("item_ids") == [item]
            and ev is not None
            and r["parameters"].get("trigger_event") == ev["id"]
        ]
        run = min(mine, key=lambda r: r["created"]) if mine else None
        t_ev = _ts(ev["occurred"]) if ev else None
        t_recv = _ts(ev["received"]) if ev and ev.get("received") else None
        t_created = _ts(run["created"]) if run else None
        t_start = _ts(run["start_time"]) if run else None
        t_end = _ts(run["end_time"]) if run else None

        def diff(a: float | None, b: float | None) -> float | None:
            return round(b - a, 2) if a is not None and b is not None else None

        result[item] = {
            "detect": diff(t0, t_ev),
            "trigger": diff(t_ev, t_created),
            "send": diff(t_ev, t_recv),
            "automate": diff(t_recv, t_created),
            "queue": diff(t_created, t_start),
            "run": diff(t_start, t_end),
            "visible": diff(t_end, seen.get(item)),
            "triggered_runs": float(len(mine)),
        }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="the watch runs' poll interval, seconds (default: the deployment's poll_seconds)",
    )
    parser.add_argument(
        "--worker-poll",
        type=float,
        default=None,
        help="PREFECT_WORKER_QUERY_SECONDS of the worker (default: Prefect's, 10 s)",
    )
    parser.add_argument(
        "--watch-driver",
        choices=("schedule", "client"),
        default="schedule",
        help="who starts the watch runs: the deployment's schedule (the Prefect server's "
        "scheduler) or this script through the REST API at the schedule's interval (same "
        "runs, for a server whose scheduler is broken)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="no warm engine beside the worker: every run imports Prefect, eoforge and "
        "great-expectations itself",
    )
    parser.add_argument("--timeout", type=float, default=600, help="give up after, seconds")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args(argv)

    # a SIGTERM unwinds like Ctrl-C, so the servers and the worker are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    spec = RunSpec.model_validate(SPEC)
    console = Console(width=120)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="eoforge-latency-") as td:
        work = Path(args.workdir or td).resolve()
        store, out = work / "store", work / "out"
        port = free_port()
        stac, first = _serve(work / "stac-first", port, _early)
        try:
            console.print(f"serving {len(first)} items on {stac.url}; training a model ...")
            model_dir = _train_production_model(spec, stac.url, work / "train", store)
            worker_env = {"EOFORGE_STORE": str(store)}
            if args.worker_poll is not None:
                worker_env["PREFECT_WORKER_QUERY_SECONDS"] = str(args.worker_poll)
            with prefect_services(
                work / "prefect", ("cpu",), worker_env, warm_engine=not args.cold
            ) as prefect:
                common = {"spec": SPEC, "store": str(store), "api_url": stac.url}
                watch_dep = prefect.request(
                    "GET", f"/deployments/{prefect.deployment_id('eoforge-watch/watch')}"
                )
                watch_params = {**watch_dep["parameters"], **common}
                if args.interval is not None:
                    watch_params["poll_seconds"] = args.interval
                schedule_s = float(watch_dep["schedules"][0]["schedule"]["interval"])
                driver = _WatchDriver(prefect, schedule_s)
                prefect.set_parameters("eoforge-watch/watch", watch_params)
                prefect.set_parameters("eoforge-infer/infer", {**common, "out": str(out)})
                prefect.update_schedules("eoforge-infer/infer", active=False)
                prefect.update_schedules(
                    "eoforge-watch/watch", active=args.watch_driver == "schedule"
                )
                if args.watch_driver == "client":
                    driver.start()
                cursor = store / "cursors" / f"{spec.stac.collection}.json"
                deadline = time.monotonic() + args.timeout
                first_run_by = time.monotonic() + 150
                while not cursor.is_file():  # the first watch run records the 6 items
                    if time.monotonic() > first_run_by and not prefect.flow_runs(
                        "eoforge-watch/watch"
                    ):
                        raise TransientError(
                            "no watch run was scheduled in 150 s: the Prefect server's scheduler "
                            f"failed (see {work / 'prefect' / 'server.log'}; Prefect 3.8 cannot "
                            "insert scheduled runs with SQLAlchemy 2.1: pin sqlalchemy<2.1), or "
                            "use --watch-driver client."
                        )
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"the watcher never completed; see {work / 'prefect' / 'worker-cpu.log'}"
                        )
                    time.sleep(1)
                console.print("watcher running; making the last two dates land ...")
                poll_s = float(watch_params.get("poll_seconds") or schedule_s)
                time.sleep(poll_s / 2)  # land between two polls
                stac.stop()
                stac, all_items = _serve(work / "stac-all", port)
                t0 = time.time()
                running = [
                    r
                    for r in prefect.flow_runs("eoforge-watch/watch")
                    if r["state"]["type"] == "RUNNING" and r["start_time"]
                ]
                # where in the watch cycle the items landed (seconds after the run polling
                # now started; None: between two runs)
                phase = (
                    round(t0 - max(_ts(r["start_time"]) or 0 for r in running), 2)
                    if running
                    else None
                )
                new = sorted(set(all_items) - set(first))
                seen: dict[str, float] = {}
                mtimes: dict[str, float] = {}
                preds = out / "predictions"
                while len(seen) < len(new):
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"only {sorted(seen)} of {new} got predictions in {args.timeout} s; "
                            f"see {work / 'prefect' / 'worker-cpu.log'}"
                        )
                    for item in new:
                        tif, js = preds / f"{item}.tif", preds / f"{item}.json"
                        if item not in seen and tif.is_file() and js.is_file():
                            seen[item] = time.time()
                            mtimes[item] = max(tif.stat().st_mtime, js.stat().st_mtime)
                    time.sleep(0.2)
                driver.stop()
                time.sleep(3)  # let the last runs report their end
                breakdown = _breakdown(prefect, out, new, t0, seen)
        finally:
            stac.stop()

    per_item = {item: round(seen[item] - t0, 2) for item in new}
    per_item_mtime = {item: round(mtimes[item] - t0, 2) for item in new}
    median = statistics.median(per_item.values())
    result = {
        "seconds": {
            "median_item_to_prediction": round(median, 2),
            "max_item_to_prediction": max(per_item.values()),
            "per_item": per_item,
            "per_item_file_mtime": per_item_mtime,
        },
        "breakdown_seconds": breakdown,
        "config": {
            "watch_poll_s": watch_params.get("poll_seconds"),
            "watch_run_s": watch_params.get("run_seconds"),
            "watch_schedule_s": schedule_s,
            "landed_s_after_watch_run_start": phase,
            "watch_driver": args.watch_driver,
            "worker_query_seconds": args.worker_poll or 10,
            "worker": "prefect process worker, pool cpu",
            "warm_engine": not args.cold,
            "items_landed": len(new),
            "model_dir": Path(model_dir).name,
            "spec": SPEC,
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.platform(),
            "prefect": _version("prefect"),
            "sqlalchemy": _version("sqlalchemy"),
            "python": platform.python_version(),
        },
    }
    table = Table(
        title="eoforge event latency: item visible -> prediction "
        f"(watch polls every {watch_params.get('poll_seconds')} s)"
    )
    steps = ("detect", "trigger", "send", "automate", "queue", "run", "visible")
    for col in ("item", "latency s", *steps):
        table.add_column(col)
    for item in new:
        b = breakdown[item]
        table.add_row(
            item,
            f"{per_item[item]:.1f}",
            *(f"{b[k]:.1f}" if b[k] is not None else "-" for k in steps),
        )
    table.add_row("median", f"{median:.1f}", *[""] * len(steps))
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
