"""Nothing hangs (issue 15, class 2): a service that accepts connections and never answers fails
within the configured deadline, ``timeout_s x (max_retries + 1)`` plus backoff, with exit 4.

The stalled service is a plain socket on loopback (:class:`StallServer`): it reads each request
and says nothing, on the landing page or only on ``/search`` (after a good landing page).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from eoforge_fault_proxy import StallServer  # type: ignore[import-not-found]

from eoforge.config import StacSpec
from eoforge.errors import TransientError
from eoforge.io.hrefs import HrefPolicy, check_redirects
from eoforge.stac.search import search_items

Cli = Callable[..., subprocess.CompletedProcess[str]]

_LANDING = json.dumps(
    {
        "type": "Catalog",
        "id": "stalls-on-search",
        "stac_version": "1.0.0",
        "description": "answers its landing page, then never again",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
        ],
        "links": [
            {"rel": "self", "href": "http://127.0.0.1:{port}/"},
            {"rel": "root", "href": "http://127.0.0.1:{port}/"},
            {
                "rel": "search",
                "type": "application/geo+json",
                "href": "http://127.0.0.1:{port}/search",
                "method": "GET",
            },
            {
                "rel": "search",
                "type": "application/geo+json",
                "href": "http://127.0.0.1:{port}/search",
                "method": "POST",
            },
        ],
    }
)
STALLS = {"landing": {}, "search": {"/": _LANDING}}


def deadline(spec: StacSpec) -> float:
    """The longest a search may take against a service that never answers: every attempt
    waits ``timeout_s``, and urllib3 sleeps ``backoff_factor * 2**n`` (+ jitter) between them."""
    backoff = sum(min(spec.backoff_factor * 2**n * 1.5, 120) for n in range(1, spec.max_retries))
    return spec.timeout_s * (spec.max_retries + 1) + backoff


def within(seconds: float, call: Callable[[], object]) -> BaseException:
    """Run ``call`` in a thread; it must raise within ``seconds`` (a hang fails the test
    instead of stalling the suite). Returns what it raised."""
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still waiting after {seconds:.1f} s: no deadline"
    assert outcome, "returned instead of failing"
    return outcome[0]


@pytest.mark.parametrize("where", sorted(STALLS))
def test_search_of_a_stalled_api_fails_within_the_deadline(where: str) -> None:
    spec = StacSpec(timeout_s=1.0, max_retries=2, backoff_factor=0.1)
    with StallServer(STALLS[where]) as api:
        err = within(deadline(spec) + 1.5, lambda: search_items(spec, api.url + "/"))
    assert isinstance(err, TransientError), repr(err)
    assert api.url in str(err) and "timed out" in str(err)


def test_cli_against_a_stalled_api_exits_4_within_the_deadline(
    eoforge_cli: Cli, tmp_path: Path
) -> None:
    """The issue's case: ``stac.timeout_s: 3`` and ``max_retries: 2`` hung forever."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stac:\n  timeout_s: 3\n  max_retries: 2\n  backoff_factor: 0.1\n")
    spec = StacSpec(timeout_s=3, max_retries=2, backoff_factor=0.1)
    with StallServer() as api:
        t0 = time.monotonic()
        proc = eoforge_cli(
            "run", "--config", str(cfg), "--plain", "--api-url", api.url + "/",
            "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
            timeout=deadline(spec) + 60,  # a hang fails here (TimeoutExpired)
        )  # fmt: skip
        took = time.monotonic() - t0
        connections = api.connections
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "TransientError" in proc.stderr and api.url in proc.stderr
    assert "Traceback" not in proc.stderr
    assert connections == spec.max_retries + 1  # every attempt, and no more
    assert took < deadline(spec) + 30, f"{took:.0f} s (deadline {deadline(spec):.0f} s + start-up)"
    assert not (tmp_path / "out").exists()


def test_asset_probe_of_a_stalled_host_fails_within_its_deadline() -> None:
    with StallServer() as host:
        err = within(
            2 * 1.0 + 3,
            lambda: check_redirects(
                f"{host.url}/B02.tif",
                HrefPolicy(hosts=("127.0.0.1",), resolve=False),
                what="asset 'blue'",
                timeout_s=1.0,
                retries=1,
            ),
        )
    assert isinstance(err, TransientError) and "did not answer" in str(err), repr(err)


def test_a_stalled_s3_endpoint_fails_within_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 calls carry eoforge's request deadline (``EOFORGE_S3_TIMEOUT_S``): without it a
    stalled endpoint waits 60 s a try, 5 tries per s3fs attempt, 5 attempts."""
    from botocore.exceptions import BotoCoreError

    from eoforge.io.stores import read_bytes

    monkeypatch.setenv("EOFORGE_S3_TIMEOUT_S", "1")
    options = {
        "key": "test",
        "secret": "test",
        "skip_instance_cache": True,
    }
    with StallServer() as s3:
        options["client_kwargs"] = {"endpoint_url": s3.url, "region_name": "us-east-1"}
        t0 = time.monotonic()
        err = within(60, lambda: read_bytes("s3://bucket/chips/index.parquet", options))
        took = time.monotonic() - t0
    assert isinstance(err, BotoCoreError | OSError), repr(err)
    assert "timeout" in str(err).lower(), str(err)
    assert took < 60


def test_storage_options_keep_their_own_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    from eoforge.io.stores import with_deadlines

    monkeypatch.setenv("EOFORGE_S3_TIMEOUT_S", "7")
    assert with_deadlines("/local/path", {"a": 1}) == {"a": 1}
    opts = with_deadlines("s3://b/k", {"config_kwargs": {"read_timeout": 120}})
    assert opts["config_kwargs"] == {
        "read_timeout": 120,
        "connect_timeout": 7.0,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    assert with_deadlines("s3://b/k", None)["config_kwargs"]["read_timeout"] == 7.0
