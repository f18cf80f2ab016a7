"""Loopback fault injection: a reverse proxy that breaks a set share of requests, and a file server.

:class:`FaultProxy` sits in front of any HTTP service on loopback (the rustac STAC API, the
:class:`RangeFileServer` serving COGs, ``moto_server`` for S3) and injects, at ``rate``, one of:

- ``500`` / ``502`` / ``503``: an error status (S3-style XML error body), nothing forwarded;
- ``429``: Too Many Requests with ``Retry-After``, nothing forwarded;
- ``timeout``: no answer until the client gives up (or ``hold_s`` passes), then close;
- ``reset``: the connection is reset (TCP RST) after the request was read, nothing forwarded;
- ``truncate``: the request *is* forwarded, the status line and headers (with the full
  ``Content-Length``) are relayed, then only half of the body, then the connection closes.
  A response without a body cannot be truncated: it becomes a reset *after* the upstream
  applied the request (the client never hears that it succeeded).

Which request is faulted is a pure function of ``(seed, method, path, Range, occurrence)``,
so a schedule does not depend on thread interleaving, and every retry of a request draws
again. ``rate=1.0`` faults every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ALL_FAULTS",
    "FaultProxy",
    "FaultSchedule",
    "RangeFileServer",
    "RedirectServer",
    "StallServer",
]

ALL_FAULTS: tuple[str, ...] = ("500", "502", "503", "429", "timeout", "reset", "truncate")
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


class FaultSchedule:
    """Decides, deterministically, which requests fail and how."""

    def __init__(self, rate: float, kinds: Sequence[str] = ALL_FAULTS, seed: int = 0) -> None:
        unknown = set(kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {ALL_FAULTS}")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.seed = seed
        self._seen: Counter[tuple[str, str, str]] = Counter()
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()

    def decide(self, method: str, path: str, range_header: str) -> str | None:
        """The fault for this request, or None to serve it."""
        key = (method, path, range_header)
        with self._lock:
            n = self._seen[key]
            self._seen[key] += 1
            self.requests += 1
            digest = hashlib.sha256(
                f"{self.seed}|{method}|{path}|{range_header}|{n}".encode()
            ).digest()
            u = int.from_bytes(digest[:8], "big") / 2**64
            if u >= self.rate or not self.kinds:
                self.counts["ok"] += 1
                return None
            kind = self.kinds[int.from_bytes(digest[8:16], "big") % len(self.kinds)]
            self.counts[kind] += 1
            return kind

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (e.g. heal the service mid-test)."""
        with self._lock:
            self.rate = rate


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # injected resets and clients giving up are expected here


class _Service:
    """A threaded HTTP server on a free loopback port, usable as a context manager."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _configure(self, server: _Server) -> None:
        server.service = self  # type: ignore[attr-defined]

    def start(self) -> Any:
        self._server = _Server(("127.0.0.1", 0), self.handler)
        self._configure(self._server)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- file server


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte-range support (what GDAL's /vsicurl/ needs)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return None
        size = path.stat().st_size
        rng = self.headers.get("Range")
        start, end = 0, size - 1
        status = 200
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].split(",")[0].partition("-")
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:  # suffix range
                start = max(size - int(last), 0)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        f = path.open("rb")
        f.seek(start)
        self._remaining = end - start + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = self._remaining
        while remaining > 0:
            block = source.read(min(remaining, 1 << 16))
            if not block:
                break
            outputfile.write(block)
            remaining -= len(block)


class RangeFileServer(_Service):
    """Serve a folder over HTTP with Range support (a stand-in for a COG bucket)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)
        root_s = str(self.root)

        class Handler(_RangeHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=root_s, **kwargs)

        self.handler = Handler


# --------------------------------------------------------------------------- redirects


class RedirectServer(_Service):
    """Answer every request with ``302 Location: <target><path>`` (hostile redirects)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        location = target.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", location + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _redirect

        self.handler = Handler


# --------------------------------------------------------------------------- fault proxy


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.connection], [], [], 0.05)
            if ready:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break  # the client gave up and closed
                except OSError:
                    break
        self._reset()

    def _error(self, status: int, code: str, retry_after: str | None = None) -> None:
        body = (
            b""
            if self.command == "HEAD"
            else f"<Error><Code>{code}</Code><Message>injected fault</Message></Error>".encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(body)) if body else "0")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        service: FaultProxy = self.server.service
        conn = http.client.HTTPConnection(service.upstream_host, service.upstream_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in {"POST", "PUT"}:
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, list(resp.getheaders()), data
        finally:
            conn.close()

    def _handle(self) -> None:
        service: FaultProxy = self.server.service
        body = self._read_body()
        path = urlsplit(self.path).path
        kind = service.schedule.decide(self.command, path, self.headers.get("Range", ""))
        if kind == "reset":
            self._reset()
            return
        if kind == "timeout":
            self._hold(service.hold_s)
            return
        if kind in {"500", "502", "503"}:
            codes = {"500": "InternalError", "502": "BadGateway", "503": "SlowDown"}
            self._error(int(kind), codes[kind])
            return
        if kind == "429":
            self._error(429, "TooManyRequestsException", service.retry_after)
            return
        status, reason, headers, data = self._forward(body)
        if service.rewrite is not None and data:
            old, new = service.rewrite
            data = data.replace(old.encode(), new.encode())
        if kind == "truncate" and (not data or self.command == "HEAD"):
            self._reset()  # applied upstream, but the client never learns it
            return
        self.send_response(status, reason)
        for k, v in headers:
            if k.lower() not in _HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        if kind == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        if kind == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


class FaultProxy(_Service):
    """A reverse proxy to ``upstream`` that faults requests by a :class:`FaultSchedule`.

    Args:
        upstream: base URL of the service (``http://127.0.0.1:PORT``).
        schedule: which requests fail and how.
        hold_s: how long a ``timeout`` fault holds the connection at most.
        retry_after: ``Retry-After`` header value of ``429`` answers (seconds).
        rewrite_links: replace the upstream's base URL by the proxy's in bodies (so that links
            a service builds from its own address, e.g. STAC ``next`` links, come back here).
    """

    handler = _ProxyHandler

    def __init__(
        self,
        upstream: str,
        schedule: FaultSchedule,
        hold_s: float = 5.0,
        retry_after: str = "0",
        rewrite_links: bool = False,
    ) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        self.upstream = upstream.rstrip("/")
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.schedule = schedule
        self.hold_s = hold_s
        self.retry_after = retry_after
        self._rewrite_links = rewrite_links
        self.rewrite: tuple[str, str] | None = None

    def start(self) -> FaultProxy:
        super().start()
        if self._rewrite_links:
            self.rewrite = (self.upstream, self.url)
        return self


# --------------------------------------------------------------------------- a stalled service


class StallServer:
    """A plain socket on loopback that accepts every connection, reads the request and never
    answers (a service that hangs, e.g. behind a stuck load balancer).

    Paths in ``answers`` get that body as a 200 JSON answer instead (``{port}`` in it is
    replaced by the server's port), so a client can get past a landing page and stall on the
    next request. ``connections`` counts accepted connections (retries included).
    """

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = dict(answers or {})
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                request = conn.recv(65536)
                if not request:
                    return
                path = request.split(b" ", 2)[1].decode() if b" " in request else ""
                body = self.answers.get(path.split("?")[0])
                if body is None:
                    self._stop.wait()  # hold the connection open, say nothing
                    return
                data = body.replace("{port}", str(self.port)).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
        except OSError:
            return

    def start(self) -> StallServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()
        self._sock.close()

    def __enter__(self) -> StallServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
