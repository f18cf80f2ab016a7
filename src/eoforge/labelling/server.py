"""The local server of the labelling page: serves the page folder on loopback and turns each
save into the labels GeoParquet (``labels.source`` points format: ``class``, ``item_id``, points
in EPSG:4326) that the next ``eoforge run`` trains on.

Labels already in the output file when the server starts are kept: a save writes them plus the
ones given on the page (a point labelled twice keeps its last class), atomically.
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eoforge.errors import InputError
from eoforge.labelling.suggest import write_points

if TYPE_CHECKING:
    import geopandas as gpd

__all__ = ["LabelServer", "labels_frame"]

_MAX_BODY = 16 << 20


def labels_frame(
    points: gpd.GeoDataFrame,
    given: list[dict[str, Any]],
    classes: list[str],
    existing: gpd.GeoDataFrame | None = None,
) -> gpd.GeoDataFrame:
    """The labels file's rows: ``existing`` labels, then the ``given`` ones (``{"rank",
    "class"}`` of the suggested ``points``; a rank given twice keeps its last class).

    Raises:
        InputError: a class not in ``classes`` or a rank not among the points.
    """
    import geopandas as gpd
    import pandas as pd

    by_rank = {int(r): i for i, r in enumerate(points["rank"])}
    chosen: dict[int, str] = {}
    for entry in given:
        try:
            rank, cls = int(entry["rank"]), str(entry["class"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"label {entry!r} must be {{'rank': int, 'class': str}}.") from exc
        if cls not in classes:
            raise InputError(f"class '{cls}' of point #{rank} is not one of {classes}.")
        if rank not in by_rank:
            raise InputError(f"point #{rank} is not among the {len(points)} suggested points.")
        chosen[rank] = cls
    rows = points.iloc[[by_rank[r] for r in chosen]]
    new = gpd.GeoDataFrame(
        {
            "class": list(chosen.values()),
            "item_id": rows["item_id"].astype(str).to_list(),
            "rank": list(chosen),
        },
        geometry=rows.geometry.to_list(),
        crs=points.crs,
    ).to_crs("EPSG:4326")
    if existing is None or len(existing) == 0:
        return new
    old = existing.to_crs("EPSG:4326")
    merged = pd.concat([old, new], ignore_index=True)
    return gpd.GeoDataFrame(merged, geometry="geometry", crs="EPSG:4326")


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the command prints the URL; per-request lines would drown it

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/save":
            self.send_error(404, "only /save accepts POST")
            return
        try:
            size = int(self.headers.get("Content-Length", "0"))
            if not 0 < size <= _MAX_BODY:
                raise InputError(f"a save must carry 1..{_MAX_BODY} bytes of JSON, got {size}.")
            body = json.loads(self.rfile.read(size))
            saved = self.server.owner.save(body.get("labels", []))
            status, reply = 200, {"saved": saved, "path": str(self.server.owner.out)}
        except (InputError, ValueError, AttributeError) as exc:
            status, reply = 400, {"error": str(exc)}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    owner: LabelServer


class LabelServer:
    """Serves ``page_dir`` on ``127.0.0.1:port`` (0: a free port) and saves labels to ``out``.

    Use as a context manager (serves in a background thread) or call :meth:`serve_forever`.

    Raises:
        InputError: ``out`` exists but is not a points file this page can extend.
    """

    def __init__(
        self,
        page_dir: Path,
        points: gpd.GeoDataFrame,
        classes: list[str],
        out: Path,
        port: int = 0,
    ) -> None:
        import geopandas as gpd

        self.points, self.classes, self.out = points, list(classes), Path(out)
        self.existing: gpd.GeoDataFrame | None = None
        if self.out.exists():
            try:
                self.existing = gpd.read_parquet(self.out)
            except Exception as exc:
                raise InputError(
                    f"labels file '{self.out}' exists but is not GeoParquet ({exc}); pass "
                    "another --out (eoforge does not overwrite files it cannot extend)."
                ) from exc
            if "class" not in self.existing.columns or self.existing.crs is None:
                raise InputError(
                    f"labels file '{self.out}' has no 'class' column or no CRS; pass another --out."
                )
        self._lock = threading.Lock()
        handler = partial(_Handler, directory=str(page_dir))
        self.httpd = _Server(("127.0.0.1", port), handler)
        self.httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def save(self, given: list[dict[str, Any]]) -> int:
        """Write the existing plus ``given`` labels; returns the labels written this session."""
        if not isinstance(given, list):
            raise InputError("'labels' must be a list of {'rank', 'class'}.")
        frame = labels_frame(self.points, given, self.classes, self.existing)
        with self._lock:
            write_points(frame, self.out)
        return len({int(g["rank"]) for g in given})

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def __enter__(self) -> LabelServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
