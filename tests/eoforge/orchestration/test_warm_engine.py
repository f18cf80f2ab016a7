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
from collections.abc import Iterator
from pathlib import Path

import pytest

from eoforge.errors import InputError
from eoforge.orchestration.warm_engine import SOCKET_ENV, _claim_socket_path

ENGINE = [sys.executable, "-m", "eoforge.orchestration.warm_engine"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Path]:
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
    yield sock
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()
    assert not sock.exists()  # the engine cleans up its socket


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
