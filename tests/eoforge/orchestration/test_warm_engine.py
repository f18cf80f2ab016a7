"""The warm engine: a real engine process forks the flow run of a real client process, which
passes its environment, working directory and standard streams and exits with the run's status;
without an engine the client becomes ``python -m prefect.engine`` itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eoforge.errors import InputError
from eoforge.orchestration.warm_engine import SOCKET_ENV, _claim_socket_path

ENGINE = [sys.executable, "-m", "eoforge.orchestration.warm_engine"]


@pytest.fixture
def engine_proc(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    # a short path: Unix socket names are limited to ~100 bytes
    sock = Path(f"/tmp/eoforge-warm-{os.getpid()}-{time.monotonic_ns()}.sock")
    log = (tmp_path / "engine.log").open("w")
    proc = subprocess.Popen([*ENGINE, "serve", "--socket", str(sock)], stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            tmp_path / "engine.log"
        ).read_text()
        time.sleep(0.2)
    yield sock, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()
    assert not sock.exists()  # the engine cleans up its socket


@pytest.fixture
def engine(engine_proc: tuple[Path, subprocess.Popen[bytes]]) -> Path:
    return engine_proc[0]


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A Prefect API URL on loopback that accepts connections and never answers: a flow run
    started against it blocks reading its own record, i.e. it stays running until stopped."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/api"


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _client(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENGINE, "run"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_the_engine_runs_prefect_engine_in_a_fork_with_the_clients_env_and_streams(
    engine: Path, tmp_path: Path
) -> None:
    # a flow run id that is not a UUID: prefect.engine says so on stderr and exits 1, from the
    # engine's fork (its working directory and environment are the client's)
    env = dict(os.environ, **{SOCKET_ENV: str(engine), "PREFECT__FLOW_RUN_ID": "not-a-run"})
    started = time.monotonic()
    done = _client(env, tmp_path)
    warm_s = time.monotonic() - started
    assert done.returncode == 1, done
    assert "Invalid flow run id" in done.stdout + done.stderr

    cold = dict(env)
    cold.pop(SOCKET_ENV)
    started = time.monotonic()
    fallback = _client(cold, tmp_path)
    cold_s = time.monotonic() - started
    assert fallback.returncode == 1 and "Invalid flow run id" in fallback.stdout + fallback.stderr
    # the warm start skips Prefect's imports; the cold one pays them
    assert warm_s < cold_s, (warm_s, cold_s)


def test_an_unreachable_engine_falls_back_to_a_cold_start(tmp_path: Path) -> None:
    env = dict(os.environ, **{SOCKET_ENV: str(tmp_path / "gone.sock"), "PREFECT__FLOW_RUN_ID": "x"})
    done = _client(env, tmp_path)
    assert done.returncode == 1 and "Invalid flow run id" in done.stdout + done.stderr


def test_the_socket_path_never_takes_a_users_file_or_a_live_engine(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    run = subprocess.run(
        [*ENGINE, "serve", "--socket", str(mine)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "is not a socket" in run.stderr, run.stderr
    assert mine.read_text() == "keep me"
    sock = Path(f"/tmp/eoforge-claim-{os.getpid()}-{time.monotonic_ns()}.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(str(sock))
        live.listen(1)
        with pytest.raises(InputError, match="already listens"):
            _claim_socket_path(sock)
        assert sock.exists()
        live.close()  # the engine died: its socket file stays behind, stale
        _claim_socket_path(sock)
        assert not sock.exists()
    finally:
        live.close()
        sock.unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_client_stops_its_run_in_the_engine(
    engine_proc: tuple[Path, subprocess.Popen[bytes]],
    silent_api: str,
    tmp_path: Path,
    how: str,
) -> None:
    """A worker cancels a flow run by SIGTERM to the process it started (the client), then
    SIGKILL after its grace period: either way the run forked in the engine must end too."""
    sock, proc = engine_proc
    env = dict(
        os.environ,
        **{
            SOCKET_ENV: str(sock),
            "PREFECT__FLOW_RUN_ID": str(uuid.uuid4()),
            "PREFECT_API_URL": silent_api,
        },
    )
    client = subprocess.Popen([*ENGINE, "run"], env=env, cwd=tmp_path)
    _wait_for(lambda: bool(_children(proc.pid)), 60, "the engine never forked the run")
    (run,) = _children(proc.pid)
    time.sleep(1.0)  # the run is blocked on the silent API, not finished
    assert client.poll() is None and _children(proc.pid) == [run]
    client.send_signal(getattr(signal, how))
    code = client.wait(timeout=60)
    if how == "SIGTERM":  # forwarded to the run; the client exits as the run did: by SIGTERM
        assert code == 128 + signal.SIGTERM, code
    else:
        assert code == -signal.SIGKILL
    # the engine saw the client go (SIGKILL) or the run end (SIGTERM): no run is left behind
    _wait_for(lambda: run not in _children(proc.pid), 30, f"run {run} outlived its client")
    assert proc.poll() is None  # the engine itself serves on
