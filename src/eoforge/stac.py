"""STAC access: serve a static catalog locally with rustac, search an API robustly, normalise items."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from eoforge.config import StacSpec
from eoforge.errors import InputError, TransientError

__all__ = [
    "LocalStacServer",
    "item_tile",
    "prepare_served_catalog",
    "search_items",
]

_RETRY_STATUS = (429, 500, 502, 503, 504)


def item_tile(item: dict[str, Any]) -> str:
    """MGRS tile of an item (``33TWL``), from ``grid:code`` or the ``mgrs:*`` fields.

    Raises:
        InputError: the item carries neither.
    """
    props = item.get("properties", {})
    code = props.get("grid:code")
    if isinstance(code, str) and code.startswith("MGRS-"):
        return code.removeprefix("MGRS-")
    zone, band, square = (
        props.get("mgrs:utm_zone"),
        props.get("mgrs:latitude_band"),
        props.get("mgrs:grid_square"),
    )
    if zone is not None and band and square:
        return f"{int(zone):02d}{band}{square}"
    raise InputError(
        f"STAC item '{item.get('id')}' has no 'grid:code' nor 'mgrs:*' properties, so its tile "
        "is unknown; use items of a tiled collection (e.g. Sentinel-2 L2A)."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"STAC file '{path}' does not exist; check the catalog folder.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(
            f"STAC file '{path}' is not valid JSON ({exc}); repair or remove it."
        ) from exc
    if not isinstance(data, dict):
        raise InputError(f"STAC file '{path}' must hold a JSON object.")
    return data


def prepare_served_catalog(
    catalog_dir: Path,
    work_dir: Path,
    include: Callable[[dict[str, Any]], bool] | None = None,
) -> list[Path]:
    """Write a copy of a static catalog that ``rustac serve`` can load as an API.

    The collection loses its item links (rustac would otherwise load the linked originals too)
    and every asset href becomes an absolute ``file://`` URI (pystac would resolve a bare path
    against the API URL).

    Args:
        catalog_dir: folder with ``collection.json`` and one folder per item.
        work_dir: where the prepared files go (created).
        include: serve only the items for which this returns True (e.g. the first dates).

    Returns:
        The collection file followed by the item files, ready for ``rustac serve``.
    """
    catalog_dir = Path(catalog_dir).resolve()
    coll_path = catalog_dir / "collection.json"
    if not coll_path.is_file():
        raise InputError(
            f"catalog folder '{catalog_dir}' has no collection.json; point stac.catalog_dir at a "
            "static STAC catalog with a collection."
        )
    collection = _read_json(coll_path)
    work_dir.mkdir(parents=True, exist_ok=True)
    item_paths: list[Path] = []
    for link in collection.get("links", []):
        if link.get("rel") != "item":
            continue
        src = (coll_path.parent / link["href"]).resolve()
        item = _read_json(src)
        if item.get("type") != "Feature" or "id" not in item or "assets" not in item:
            raise InputError(
                f"STAC item file '{src}' is not a STAC Item (needs type Feature, id, assets)."
            )
        for key, asset in item["assets"].items():
            href = asset.get("href")
            if not isinstance(href, str):
                raise InputError(f"asset '{key}' of STAC item '{src}' has no href.")
            if "://" not in href:
                asset["href"] = (src.parent / href).resolve().as_uri()
        item["links"] = [
            lk
            for lk in item.get("links", [])
            if lk.get("rel") not in {"self", "parent", "root", "collection"}
        ]
        item["collection"] = collection["id"]
        if include is not None and not include(item):
            continue
        dst = work_dir / f"{item['id']}.json"
        dst.write_text(json.dumps(item))
        item_paths.append(dst)
    if not item_paths:
        raise InputError(f"collection '{coll_path}' links no items; nothing to serve.")
    collection["links"] = [
        lk
        for lk in collection.get("links", [])
        if lk.get("rel") not in {"item", "child", "parent", "root", "self"}
    ]
    coll_out = work_dir / "collection.json"
    coll_out.write_text(json.dumps(collection))
    return [coll_out, *sorted(item_paths)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rustac_exe() -> str:
    exe = Path(sys.executable).parent / "rustac"
    if exe.exists():
        return str(exe)
    found = shutil.which("rustac")
    if not found:
        raise InputError("the 'rustac' command is not installed; `pip install rustac`.")
    return found


@dataclass
class LocalStacServer:
    """A ``rustac serve`` STAC API (in-memory backend) on a free loopback port.

    Use as a context manager; ``url`` is the API root.
    """

    files: Sequence[Path]
    port: int = 0
    startup_timeout_s: float = 30.0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> LocalStacServer:
        if not self.port:
            self.port = _free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [_rustac_exe(), "serve", "--addr", f"127.0.0.1:{self.port}", *map(str, self.files)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TransientError(
                    f"rustac serve exited with code {self._proc.returncode} while starting on "
                    f"port {self.port}; see {self.log_path or 'its output'}."
                )
            try:
                if requests.get(self.url, timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise TransientError(
            f"rustac serve did not answer on {self.url} within {self.startup_timeout_s} s."
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> LocalStacServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _stac_io(spec: StacSpec) -> Any:
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    retry = Retry(
        total=spec.max_retries,
        connect=spec.max_retries,
        read=spec.max_retries,
        status=spec.max_retries,
        backoff_factor=spec.backoff_factor,
        backoff_jitter=spec.backoff_factor / 2,
        status_forcelist=_RETRY_STATUS,
        allowed_methods=None,  # POST /search is idempotent; retry it too
        respect_retry_after_header=True,
        raise_on_status=True,
    )
    return StacApiIO(max_retries=retry, timeout=spec.timeout_s)


def _is_connection_problem(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(
            cur, requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError
        ):
            return True
        text = str(cur)
        if "Max retries exceeded" in text or "Connection refused" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def search_items(
    spec: StacSpec, api_url: str, ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Search a STAC API and return the matching items as dicts, sorted by tile, time, id.

    Retries with exponential backoff and jitter (``spec.max_retries``, ``spec.backoff_factor``)
    on connection errors and 429/5xx. Cloud cover is filtered client-side (the local rustac
    backend has no Query extension).

    Raises:
        TransientError: the API could not be reached after the retries.
        InputError: the search returned nothing, or an item lacks a required band.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    where = f"STAC API {api_url}"
    try:
        client = Client.open(api_url, stac_io=_stac_io(spec))
        search = client.search(
            collections=[spec.collection],
            bbox=spec.bbox,
            datetime=spec.datetime,
            max_items=spec.max_items,
            ids=list(ids) if ids else None,
        )
        items = [it.to_dict(transform_hrefs=False) for it in search.items()]
    except (APIError, requests.RequestException, OSError) as exc:
        if _is_connection_problem(exc):
            raise TransientError(
                f"{where} is unreachable after {spec.max_retries} retries ({type(exc).__name__}: "
                f"{str(exc)[:200]}); check the URL and that the server is up, then retry."
            ) from exc
        raise InputError(
            f"{where} rejected the search: {str(exc)[:300]}; check the search parameters."
        ) from exc
    if spec.max_cloud_cover is not None:
        items = [
            it
            for it in items
            if it["properties"].get("eo:cloud_cover") is None
            or it["properties"]["eo:cloud_cover"] <= spec.max_cloud_cover
        ]
    if ids:
        missing_ids = sorted(set(ids) - {it["id"] for it in items})
        if missing_ids:
            raise InputError(
                f"{where}: items {missing_ids} of collection '{spec.collection}' were not found "
                f"(within datetime={spec.datetime}, bbox={spec.bbox}); check the ids."
            )
    if not items:
        raise InputError(
            f"{where}: search of collection '{spec.collection}' (bbox={spec.bbox}, "
            f"datetime={spec.datetime}, max_cloud_cover={spec.max_cloud_cover}) returned no items; "
            "widen the area, the dates or the cloud limit, or check the collection id."
        )
    required = (*spec.bands, spec.label_asset)
    for it in items:
        missing = [b for b in required if b not in it.get("assets", {})]
        if missing:
            raise InputError(
                f"STAC item '{it.get('id')}' from {where} lacks required band asset(s) {missing} "
                f"(it has {sorted(it.get('assets', {}))}); choose bands the collection provides "
                "(stac.bands / stac.label_asset) or exclude such items."
            )
    items.sort(key=lambda it: (item_tile(it), it["properties"].get("datetime") or "", it["id"]))
    return items


def self_href(item: dict[str, Any]) -> str | None:
    """The item's ``self`` link href, if any."""
    for lk in item.get("links", []):
        if lk.get("rel") == "self":
            return str(lk["href"])
    return None
