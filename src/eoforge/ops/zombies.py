"""Find flow runs a crash left "Running" and mark them Crashed, through the Prefect REST API.

A SIGKILLed (or OOM-killed, or powered-off) flow process cannot report its end, so Prefect
shows its run as RUNNING forever. Two kinds of evidence tell a zombie from a slow run:

- **Run locks**: an eoforge flow holds a :class:`RunLock` (a small JSON file in the store's
  ``runs/`` folder naming its flow run, pid and host, touched every ``interval_s``). A lock
  whose process is gone (same host) or that nobody touched for ``stale_after_s`` (another host)
  marks its run a zombie; a lock whose process is alive protects it.
- **Heartbeats**: with ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` set, Prefect's flow engine emits a
  ``prefect.flow-run.heartbeat`` event every few seconds; a RUNNING run whose last heartbeat is
  older than ``stale_after_s`` is a zombie.

A RUNNING run with neither kind of evidence is left alone unless ``silent_after_s`` is given.
Plain Python over HTTP (no Prefect import), so it runs anywhere: a cron job, a Prefect
deployment, the CLI. ``docs/reliability.md`` also shows the Prefect automation alternative.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from eoforge.errors import InputError, TransientError
from eoforge.io.atomic import pid_alive

__all__ = [
    "HEARTBEAT_EVENT",
    "LockInfo",
    "RunLock",
    "Zombie",
    "find_zombies",
    "mark_crashed",
    "read_locks",
    "reap_zombies",
]

#: The event Prefect's flow engine emits while a flow run is alive.
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_LOCK_SUFFIX = ".lock.json"


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- run locks


@dataclass
class RunLock:
    """A lock file naming the flow run this process executes, touched while it lives.

    Use as a context manager around a flow's body; the file is removed on a normal exit and
    left behind by a crash, which is what :func:`find_zombies` looks for.
    """

    folder: Path
    """Where lock files live (e.g. ``<store>/runs``)."""
    flow_run_id: str
    """The Prefect flow run id this process executes."""
    interval_s: float = 30.0
    """How often the file's modification time is refreshed."""
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> Path:
        """The lock file."""
        return Path(self.folder) / f"{self.flow_run_id}{_LOCK_SUFFIX}"

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self) -> RunLock:
        from eoforge.io.atomic import write_json_atomic

        if not self.flow_run_id or "/" in self.flow_run_id or self.flow_run_id.startswith("."):
            raise InputError(f"flow run id {self.flow_run_id!r} cannot name a lock file.")
        write_json_atomic(
            self.path,
            {
                "flow_run_id": self.flow_run_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "host_tag": _HOST_TAG,
                "started": _now().isoformat(),
            },
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="eoforge-run-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LockInfo:
    """A run lock found on disk."""

    path: Path
    flow_run_id: str
    pid: int
    host: str
    same_host: bool
    touched: datetime

    def alive(self, stale_after_s: float, now: datetime) -> bool | None:
        """True: its process lives; False: it is gone; None: cannot tell (other host, fresh)."""
        if self.same_host:
            return pid_alive(self.pid)
        if (now - self.touched).total_seconds() > stale_after_s:
            return False
        return None


def read_locks(folders: Iterable[Path | str]) -> dict[str, LockInfo]:
    """Run locks in ``folders`` by flow run id (unreadable files are skipped)."""
    locks: dict[str, LockInfo] = {}
    for folder in folders:
        base = Path(folder)
        if not base.is_dir():
            continue
        for p in sorted(base.glob(f"*{_LOCK_SUFFIX}")):
            try:
                data = json.loads(p.read_text())
                touched = datetime.fromtimestamp(p.stat().st_mtime, UTC)
                info = LockInfo(
                    path=p,
                    flow_run_id=str(data["flow_run_id"]),
                    pid=int(data["pid"]),
                    host=str(data.get("host", "")),
                    same_host=data.get("host_tag") == _HOST_TAG,
                    touched=touched,
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            locks[info.flow_run_id] = info
    return locks


# --------------------------------------------------------------------------- Prefect REST


@dataclass(frozen=True)
class Zombie:
    """A flow run found RUNNING although nothing executes it any more."""

    flow_run_id: str
    name: str
    reason: str
    last_seen: datetime | None


class _Api:
    def __init__(self, api_url: str, api_key: str | None, timeout_s: float) -> None:
        import requests

        self.base = api_url.rstrip("/")
        self.session = requests.Session()
        key = api_key if api_key is not None else os.environ.get("PREFECT_API_KEY")
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout_s = timeout_s

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import requests

        from eoforge.io.redact import redact

        url = f"{self.base}{path}"
        try:
            resp = self.session.post(url, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise TransientError(
                f"Prefect API {self.base} is unreachable ({type(exc).__name__}: "
                f"{redact(str(exc))[:200]}); check PREFECT_API_URL and retry."
            ) from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientError(f"Prefect API {url} answered {resp.status_code}; retry later.")
        if resp.status_code >= 400:
            raise InputError(
                f"Prefect API {url} refused the request ({resp.status_code}: "
                f"{redact(resp.text)[:300]}); check the API URL and version."
            )
        return resp.json() if resp.content else None

    def close(self) -> None:
        self.session.close()


def _running_runs(
    api: _Api, limit: int, flow_run_ids: Collection[str] | None
) -> list[dict[str, Any]]:
    flt: dict[str, Any] = {"state": {"type": {"any_": ["RUNNING"]}}}
    if flow_run_ids is not None:
        flt["id"] = {"any_": sorted(flow_run_ids)}
    runs = api.post("/flow_runs/filter", {"flow_runs": flt, "limit": limit})
    return [r for r in runs or [] if isinstance(r, dict)]


def _last_heartbeat(api: _Api, flow_run_id: str, since: datetime) -> datetime | None:
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "event": {"name": [HEARTBEAT_EVENT]},
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "order": "DESC",
        },
        "limit": 1,
    }
    page = api.post("/events/filter", body) or {}
    events = page.get("events") or []
    return _parse_time(events[0].get("occurred")) if events else None


def find_zombies(
    api_url: str,
    *,
    stale_after_s: float = 120.0,
    lock_dirs: Sequence[Path | str] = (),
    silent_after_s: float | None = None,
    flow_run_ids: Collection[str] | None = None,
    now: datetime | None = None,
    api_key: str | None = None,
    limit: int = 200,
    timeout_s: float = 30.0,
) -> list[Zombie]:
    """RUNNING flow runs that nothing executes any more (see the module doc for the evidence).

    Args:
        api_url: Prefect API root (``PREFECT_API_URL``, e.g. ``http://127.0.0.1:4200/api``).
        stale_after_s: a heartbeat (or another host's lock) older than this means dead;
            keep it at 3x the heartbeat interval or more.
        lock_dirs: folders holding :class:`RunLock` files (e.g. ``<store>/runs``).
        silent_after_s: also count runs without any heartbeat or lock whose RUNNING state is
            older than this (None: never; only safe when every run sends heartbeats).
        flow_run_ids: inspect only these runs (default: every RUNNING run).
        now: the current time (tests).
        api_key: bearer token (default ``PREFECT_API_KEY``).
        limit: most RUNNING runs inspected per call.
        timeout_s: per-request timeout.

    Raises:
        TransientError: the API is unreachable or failing.
        InputError: the API refused the queries (wrong URL or version).
    """
    now = now or _now()
    locks = read_locks(lock_dirs)
    api = _Api(api_url, api_key, timeout_s)
    zombies: list[Zombie] = []
    try:
        for run in _running_runs(api, limit, flow_run_ids):
            run_id = str(run.get("id"))
            name = str(run.get("name", ""))
            state = run.get("state") or {}
            entered = _parse_time(state.get("timestamp")) or _parse_time(run.get("start_time"))
            lock = locks.get(run_id)
            if lock is not None:
                alive = lock.alive(stale_after_s, now)
                if alive is True:
                    continue
                if alive is False:
                    why = (
                        f"its process {lock.pid} is gone"
                        if lock.same_host
                        else f"its lock on host {lock.host} was last touched {lock.touched:%Y-%m-%d %H:%M:%S}Z"
                    )
                    zombies.append(
                        Zombie(run_id, name, f"run lock {lock.path.name}: {why}", lock.touched)
                    )
                    continue
            since = (entered or now) - timedelta(minutes=5)
            beat = _last_heartbeat(api, run_id, since)
            if beat is not None:
                age = (now - beat).total_seconds()
                if age > stale_after_s:
                    zombies.append(
                        Zombie(
                            run_id,
                            name,
                            f"no heartbeat for {age:.0f} s (> {stale_after_s:.0f} s)",
                            beat,
                        )
                    )
                continue
            if silent_after_s is not None and entered is not None:
                age = (now - entered).total_seconds()
                if age > silent_after_s:
                    zombies.append(
                        Zombie(
                            run_id,
                            name,
                            f"RUNNING for {age:.0f} s without heartbeat or run lock",
                            entered,
                        )
                    )
    finally:
        api.close()
    return zombies


def mark_crashed(
    api_url: str,
    flow_run_id: str,
    message: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> str:
    """Force a flow run into the CRASHED state; return the API's status (``ACCEPT``...)."""
    api = _Api(api_url, api_key, timeout_s)
    try:
        result = api.post(
            f"/flow_runs/{flow_run_id}/set_state",
            {
                "state": {"type": "CRASHED", "name": "Crashed", "message": message},
                "force": True,
            },
        )
    finally:
        api.close()
    return str((result or {}).get("status", "UNKNOWN"))


def reap_zombies(
    api_url: str,
    *,
    stale_after_s: float = 120.0,
    lock_dirs: Sequence[Path | str] = (),
    silent_after_s: float | None = None,
    flow_run_ids: Collection[str] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    api_key: str | None = None,
) -> list[Zombie]:
    """Mark every zombie (see :func:`find_zombies`, same arguments) CRASHED; drop its run lock.

    Returns:
        The zombies found (marked unless ``dry_run``).
    """
    zombies = find_zombies(
        api_url,
        stale_after_s=stale_after_s,
        lock_dirs=lock_dirs,
        silent_after_s=silent_after_s,
        flow_run_ids=flow_run_ids,
        now=now,
        api_key=api_key,
    )
    if dry_run:
        return zombies
    locks = read_locks(lock_dirs)
    for z in zombies:
        mark_crashed(
            api_url,
            z.flow_run_id,
            f"eoforge: marked crashed, {z.reason}. Re-run the flow; its outputs are "
            "published atomically, so nothing it left behind reads as valid.",
            api_key=api_key,
        )
        lock = locks.get(z.flow_run_id)
        if lock is not None:
            lock.path.unlink(missing_ok=True)
    return zombies
