"""Tests of eoforge.stac.signing against a real token endpoint on loopback standing in for
Planetary Computer's (``PC_SDK_SAS_URL``)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import planetary_computer
import pytest

from eoforge.errors import InputError, TransientError
from eoforge.stac.signing import sign_items

BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/T/WL/2023/08/15/B04.tif"


def _item(href: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2A_MSIL2A_20230815",
        "properties": {"datetime": "2023-08-15T09:58:11Z"},
        "geometry": None,
        "links": [],
        "assets": {"red": {"href": href}, "thumb": {"href": "https://example.com/t.png"}},
    }


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A token endpoint answering as Planetary Computer's does; ``state['status']`` sets its
    status code, ``state['requests']`` lists the paths asked for."""
    state: dict[str, Any] = {"status": 200, "requests": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["requests"].append(self.path)
            body = json.dumps(
                {"msft:expiry": "2030-01-01T00:00:00Z", "token": "st=2026&se=2030&sp=rl&sig=abc"}
            ).encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _use(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1/token")
    yield state
    server.shutdown()
    server.server_close()


def _use(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("PC_SDK_SAS_URL", url)
    planetary_computer.settings.Settings.get.cache_clear()
    planetary_computer.sas.TOKEN_CACHE.clear()


def test_blob_hrefs_are_signed_once_per_container(token_endpoint: dict[str, Any]) -> None:
    items = [_item(BLOB), _item(BLOB.replace("B04", "B03"))]
    signed = sign_items(items, "planetary-computer", timeout_s=10)
    assert signed[0]["assets"]["red"]["href"] == BLOB + "?st=2026&se=2030&sp=rl&sig=abc"
    assert signed[1]["assets"]["red"]["href"].endswith("B03.tif?st=2026&se=2030&sp=rl&sig=abc")
    assert signed[0]["assets"]["thumb"]["href"] == "https://example.com/t.png"  # not on Azure
    assert items[0]["assets"]["red"]["href"] == BLOB  # the caller's items are not changed
    assert token_endpoint["requests"] == ["/api/sas/v1/token/sentinel2l2a01/sentinel2-l2"]
    assert sign_items(items, None) == items


def test_a_refused_token_is_an_input_error(token_endpoint: dict[str, Any]) -> None:
    token_endpoint["status"] = 403
    with pytest.raises(InputError, match="refused to sign"):
        sign_items([_item(BLOB)], "planetary-computer", timeout_s=10)


def test_a_silent_token_endpoint_fails_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    _use(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}/token")
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="did not answer within 1 s"):
        sign_items([_item(BLOB)], "planetary-computer", timeout_s=1)
    assert time.monotonic() - t0 < 5
    silent.close()


def test_unknown_signer() -> None:
    with pytest.raises(InputError, match="not one of"):
        sign_items([_item(BLOB)], "earth-engine")
