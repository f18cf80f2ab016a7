"""A real S3 API on loopback for tests and benchmarks: ``moto_server`` (``pip install
'moto[server]'``), started on a free port and stopped with everything it spawned."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from eoforge.errors import InputError, TransientError
from eoforge.testing.processes import BIN, free_port

__all__ = ["moto_server_exe", "s3_server"]


def moto_server_exe() -> str | None:
    """Path of this environment's ``moto_server``, or None when moto[server] is not installed."""
    exe = BIN / "moto_server"
    return str(exe) if exe.exists() else None


@contextmanager
def s3_server(startup_timeout: float = 30) -> Iterator[str]:
    """A fresh ``moto_server`` on a free loopback port: yields its endpoint URL.

    Raises:
        InputError: moto[server] is not installed in this environment.
        TransientError: the server did not answer within ``startup_timeout`` seconds.
    """
    exe = moto_server_exe()
    if exe is None:
        raise InputError(
            f"moto_server not found next to the interpreter in {BIN}; "
            "install the dev extra (pip install -e '.[dev]') or 'moto[server]'."
        )
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise TransientError(f"moto_server on {url} did not come up") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
