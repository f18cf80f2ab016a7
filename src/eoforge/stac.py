"""STAC access: serve a static catalog locally with rustac, search an API robustly, normalise items.

Catalogs are input from others: item files and API answers are validated (a malformed one is
an :class:`~eoforge.errors.InputError` naming it), every asset href that will be read must pass
the :class:`~eoforge.hrefs.HrefPolicy`, API pages may only come from the API's own host, and
transient failures (429 with ``Retry-After``, 5xx, resets, timeouts, truncated bodies) are
retried a bounded number of times before a :class:`~eoforge.errors.TransientError`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from eoforge.config import StacSpec
from eoforge.errors import InputError, TransientError
from eoforge.hrefs import HrefPolicy, check_href, check_redirects
from eoforge.redact import redact, redact_url

__all__ = [
    "ENV_PROBE_REDIRECTS",
    "LocalStacServer",
    "crosses_antimeridian",
    "item_epsg",
    "item_tile",
    "prepare_served_catalog",
    "search_items",
    "search_policy",
    "self_href",
    "validate_item",
]

_RETRY_STATUS = (429, 500, 502, 503, 504)
#: Set to ``0`` to skip following asset redirects during search (see :func:`search_items`).
ENV_PROBE_REDIRECTS = "EOFORGE_PROBE_REDIRECTS"
# Item ids become file names (prepared catalogs, predictions): no separators, no leading dot.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


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


def item_epsg(item: Mapping[str, Any], asset: str | None = None) -> int | None:
    """EPSG code of an item (or of one of its assets) from ``proj:epsg`` / ``proj:code``."""
    sources: list[Mapping[str, Any]] = []
    if asset is not None:
        sources.append(item.get("assets", {}).get(asset, {}))
    sources.append(item.get("properties", {}))
    for src in sources:
        epsg = src.get("proj:epsg")
        if isinstance(epsg, int) and not isinstance(epsg, bool):
            return epsg
        code = src.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            try:
                return int(code.split(":", 1)[1])
            except ValueError:
                return None
    return None


def crosses_antimeridian(item: Mapping[str, Any]) -> bool:
    """Whether an item's footprint crosses the antimeridian (180° longitude).

    True when its bbox has west > east (the STAC convention for such boxes) or spans more
    than 180° of longitude, or its geometry's longitudes do.
    """
    bbox = item.get("bbox")
    if isinstance(bbox, list | tuple) and len(bbox) in (4, 6):
        west, east = float(bbox[0]), float(bbox[len(bbox) // 2])
        if west > east or east - west > 180:
            return True
    lons: list[float] = []

    def walk(coords: Any) -> None:
        if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
            lons.append(float(coords[0]))
        elif isinstance(coords, list | tuple):
            for c in coords:
                walk(c)

    geometry = item.get("geometry")
    if isinstance(geometry, Mapping):
        walk(geometry.get("coordinates"))
    return bool(lons) and max(lons) - min(lons) > 180


def validate_item(item: Any, where: str) -> dict[str, Any]:
    """Check that ``item`` is a usable STAC Item; return it.

    Raises:
        InputError: not a JSON object, not ``type: Feature``, no safe ``id``, no ``properties``
            with a ``datetime``, ``assets`` that are not objects with string hrefs, or a footprint
            crossing the antimeridian.
    """
    if not isinstance(item, dict):
        raise InputError(
            f"{where} is not a STAC Item: expected a JSON object, got {type(item).__name__}."
        )
    item_id = item.get("id")
    if item.get("type") != "Feature" or not isinstance(item_id, str):
        raise InputError(
            f'{where} is not a STAC Item (needs "type": "Feature" and a string "id"); '
            "fix or remove it."
        )
    if not _SAFE_ID.match(item_id):
        raise InputError(
            f"STAC item id {item_id!r} in {where} is not safe to use as a file name (letters, "
            "digits and ._+- only, not starting with a dot); fix the id."
        )
    props = item.get("properties")
    if not isinstance(props, dict) or not (props.get("datetime") or props.get("start_datetime")):
        raise InputError(
            f"STAC item '{item_id}' in {where} has no properties.datetime; fix the item."
        )
    assets = item.get("assets")
    if not isinstance(assets, dict):
        raise InputError(f"STAC item '{item_id}' in {where} has no \"assets\" object.")
    for key, asset in assets.items():
        if (
            not isinstance(asset, dict)
            or not isinstance(asset.get("href"), str)
            or not asset["href"]
        ):
            raise InputError(
                f"asset '{key}' of STAC item '{item_id}' in {where} has no href; fix the item."
            )
    if crosses_antimeridian(item):
        raise InputError(
            f"STAC item '{item_id}' in {where} crosses the antimeridian (bbox {item.get('bbox')}); "
            "eoforge cannot place such a scene on one lon/lat footprint. Exclude it (narrow "
            "stac.bbox) or split the catalog's item at 180°."
        )
    return item


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


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def prepare_served_catalog(
    catalog_dir: Path,
    work_dir: Path,
    include: Callable[[dict[str, Any]], bool] | None = None,
    policy: HrefPolicy | None = None,
) -> list[Path]:
    """Write a copy of a static catalog that ``rustac serve`` can load as an API.

    The collection loses its item links (rustac would otherwise load the linked originals too)
    and every asset href becomes an absolute ``file://`` URI (pystac would resolve a bare path
    against the API URL).

    Args:
        catalog_dir: folder with ``collection.json`` and one folder per item.
        work_dir: where the prepared files go (created).
        include: serve only the items for which this returns True (e.g. the first dates).
        policy: what asset hrefs may point at (default: files inside ``catalog_dir`` plus
            :meth:`HrefPolicy.from_env`, public hosts).

    Returns:
        The collection file followed by the item files, ready for ``rustac serve``.

    Raises:
        InputError: a missing or malformed collection or item file, an item link or asset
            href outside the catalog folder, or an href the policy refuses.
    """
    catalog_dir = Path(catalog_dir).resolve()
    policy = policy or HrefPolicy.from_env(roots=[catalog_dir])
    coll_path = catalog_dir / "collection.json"
    if not coll_path.is_file():
        raise InputError(
            f"catalog folder '{catalog_dir}' has no collection.json; point stac.catalog_dir at a "
            "static STAC catalog with a collection."
        )
    collection = _read_json(coll_path)
    if not isinstance(collection.get("id"), str) or not isinstance(
        collection.get("links", []), list
    ):
        raise InputError(
            f'collection \'{coll_path}\' needs a string "id" and a "links" list; fix it.'
        )
    prepared: list[dict[str, Any]] = []
    for link in collection.get("links", []):
        if not isinstance(link, dict) or link.get("rel") != "item":
            continue
        href = link.get("href")
        if not isinstance(href, str) or "://" in href or href.startswith("/"):
            raise InputError(
                f"item link {redact(str(href))!r} of collection '{coll_path}' must be a path "
                "relative to the catalog folder; fix the link."
            )
        src = (coll_path.parent / href).resolve()
        if not _inside(src, catalog_dir):
            raise InputError(
                f"item link '{href}' of collection '{coll_path}' points outside the catalog "
                f"folder '{catalog_dir}' (to '{src}'); fix the link."
            )
        item = validate_item(_read_json(src), f"STAC item file '{src}'")
        for key, asset in item["assets"].items():
            href = asset["href"]
            what = f"asset '{key}' of STAC item file '{src}'"
            if "://" not in href and not href.startswith("/"):
                resolved = (src.parent / href).resolve()
                if ".." in Path(href).parts or not _inside(resolved, catalog_dir):
                    raise InputError(
                        f"{what} has href '{href}', which climbs out of the catalog folder "
                        f"'{catalog_dir}' (to '{resolved}'); fix the href."
                    )
                href = resolved.as_uri()
            asset["href"] = check_href(href, policy, what=what)
        item["links"] = [
            lk
            for lk in item.get("links", [])
            if isinstance(lk, dict)
            and lk.get("rel") not in {"self", "parent", "root", "collection"}
        ]
        item["collection"] = collection["id"]
        if include is None or include(item):
            prepared.append(item)
    if not prepared:
        raise InputError(f"collection '{coll_path}' links no items; nothing to serve.")
    ids = [str(it["id"]) for it in prepared]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"collection '{coll_path}' links items with the same id {dupes}.")
    collection["links"] = [
        lk
        for lk in collection.get("links", [])
        if isinstance(lk, dict) and lk.get("rel") not in {"item", "child", "parent", "root", "self"}
    ]
    # everything checked: only now write (a refused catalog leaves nothing behind)
    work_dir.mkdir(parents=True, exist_ok=True)
    item_paths = []
    for item in prepared:
        dst = work_dir / f"{item['id']}.json"
        dst.write_text(json.dumps(item))
        item_paths.append(dst)
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


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port


def _stac_io(spec: StacSpec, api_url: str, policy: HrefPolicy) -> Any:
    """A pystac-client IO that retries transient failures and stays on the API's own host."""
    from pystac_client.exceptions import APIError
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
        redirect=0,
        raise_on_redirect=False,
    )
    api_origin = _origin(api_url)

    def same_origin(url: str) -> bool:
        o = _origin(url)
        return o == api_origin or (o[1] is not None and policy.host_allowed(o[1], o[2]))

    class _Io(StacApiIO):  # type: ignore[misc]
        """Retries body-level failures (truncation, resets mid-body, broken JSON) too."""

        def request(
            self,
            href: str,
            method: str | None = None,
            headers: dict[str, str] | None = None,
            parameters: dict[str, Any] | None = None,
        ) -> str:
            if not same_origin(href):
                raise InputError(
                    f"STAC API {redact_url(api_url)} sent eoforge to '{redact_url(href)}', "
                    "another host (in a pagination or collection link); refusing to follow. "
                    "Check the API, or allow the host in EOFORGE_ALLOWED_HOSTS."
                )
            attempts = spec.max_retries + 1
            for attempt in range(attempts):
                try:
                    text: str = super().request(href, method, headers, parameters)
                    json.loads(text)  # a body cut short reads as broken JSON: retry it
                    return text
                except (APIError, ValueError) as exc:
                    status = getattr(exc, "status_code", None)
                    if isinstance(status, int) and not (status == 429 or status >= 500):
                        raise
                    if _retries_exhausted(exc):
                        raise  # urllib3 already retried this connection / status failure
                    if attempt == attempts - 1:
                        if isinstance(exc, ValueError):
                            raise InputError(
                                f"STAC API {redact_url(api_url)} answered "
                                f"'{redact_url(href)}' with invalid JSON {attempts} times "
                                f"({exc}); the API is broken or not a STAC API."
                            ) from exc
                        raise
                    delay = spec.backoff_factor * 2**attempt
                    time.sleep(delay + random.uniform(0, delay / 2))
            raise AssertionError("unreachable")  # pragma: no cover

    io = _Io(max_retries=retry, timeout=spec.timeout_s)

    def refuse_foreign_redirects(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.is_redirect:
            target = urljoin(resp.url, resp.headers.get("Location", ""))
            if not same_origin(target):
                raise InputError(
                    f"STAC API {redact_url(api_url)} redirected '{redact_url(resp.url)}' to "
                    f"'{redact_url(target)}', another host; refusing to follow. Use the final "
                    "API URL directly, or allow the host in EOFORGE_ALLOWED_HOSTS."
                )

    io.session.hooks["response"].append(refuse_foreign_redirects)
    io.session.max_redirects = 3
    return io


def _chain(exc: BaseException) -> list[BaseException]:
    seen: set[int] = set()
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _retries_exhausted(exc: BaseException) -> bool:
    from urllib3.exceptions import MaxRetryError

    return any(
        isinstance(e, requests.exceptions.RetryError | MaxRetryError)
        or "Max retries exceeded" in str(e)
        for e in _chain(exc)
    )


def _is_connection_problem(exc: BaseException) -> bool:
    from urllib3.exceptions import ProtocolError

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(
            cur,
            requests.ConnectionError
            | requests.Timeout
            | requests.exceptions.RetryError
            | requests.exceptions.ChunkedEncodingError
            | requests.exceptions.ContentDecodingError
            | ProtocolError,
        ):
            return True
        text = str(cur)
        if "Max retries exceeded" in text or "Connection refused" in text:
            return True
        status = getattr(cur, "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _input_error_in_chain(exc: BaseException) -> InputError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, InputError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def search_policy(spec: StacSpec, api_url: str) -> HrefPolicy:
    """The href policy of a search: files in ``spec.catalog_dir``, public hosts, the API's host.

    The API's own host is trusted for assets too (a local API serving local files is the
    development setup); everything else private needs ``EOFORGE_ALLOWED_HOSTS``.
    """
    host = urlsplit(api_url).hostname
    return HrefPolicy.from_env(roots=[spec.catalog_dir], hosts=[host] if host else [])


def _check_search_box(spec: StacSpec) -> None:
    if spec.bbox is None:
        return
    west, south, east, north = spec.bbox
    if west > east:
        raise InputError(
            f"stac.bbox {list(spec.bbox)} crosses the antimeridian (west {west} > east {east}); "
            "eoforge cannot build one cube across 180°: search each side separately."
        )
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
        raise InputError(
            f"stac.bbox {list(spec.bbox)} is not a lon/lat box (west, south, east, north with "
            "-180 <= lon <= 180, -90 <= south <= north <= 90); fix it."
        )


def search_items(
    spec: StacSpec,
    api_url: str,
    ids: Sequence[str] | None = None,
    policy: HrefPolicy | None = None,
) -> list[dict[str, Any]]:
    """Search a STAC API and return the matching items as dicts, sorted by tile, time, id.

    Retries with exponential backoff and jitter (``spec.max_retries``, ``spec.backoff_factor``)
    on connection errors, 429 (honouring ``Retry-After``), 5xx, and bodies cut short. Cloud cover
    is filtered client-side (the local rustac backend has no Query extension). Every required
    asset href must pass ``policy`` (default :func:`search_policy`); http(s) assets are also
    probed for redirects to hosts the policy does not allow (``EOFORGE_PROBE_REDIRECTS=0``
    turns the probe off).

    Raises:
        TransientError: the API could not be reached after the retries.
        InputError: the search returned nothing or malformed items, an item lacks a required
            band, crosses the antimeridian, or has an asset href the policy refuses.
    """
    from pystac import STACError
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    _check_search_box(spec)
    policy = policy or search_policy(spec, api_url)
    where = f"STAC API {redact_url(api_url)}"
    try:
        client = Client.open(api_url, stac_io=_stac_io(spec, api_url, policy))
        search = client.search(
            collections=[spec.collection],
            bbox=spec.bbox,
            datetime=spec.datetime,
            max_items=spec.max_items,
            ids=list(ids) if ids else None,
        )
        items = [it.to_dict(transform_hrefs=False) for it in search.items()]
    except InputError:
        raise
    except (APIError, requests.RequestException, OSError) as exc:
        inner = _input_error_in_chain(exc)
        if inner is not None:
            raise inner from exc
        if _is_connection_problem(exc):
            raise TransientError(
                f"{where} is unreachable after {spec.max_retries} retries ({type(exc).__name__}: "
                f"{redact(str(exc))[:200]}); check the URL and that the server is up, then retry."
            ) from exc
        raise InputError(
            f"{where} rejected the search: {redact(str(exc))[:300]}; check the search parameters."
        ) from exc
    except (KeyError, TypeError, ValueError, AttributeError, STACError) as exc:
        raise InputError(
            f"{where} returned a malformed STAC response ({type(exc).__name__}: "
            f"{redact(str(exc))[:200]}); the API is broken or serves invalid items."
        ) from exc
    for it in items:
        validate_item(it, where)
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
    _check_asset_hrefs(items, required, policy, spec)
    items.sort(key=lambda it: (item_tile(it), it["properties"].get("datetime") or "", it["id"]))
    return items


def _check_asset_hrefs(
    items: Sequence[dict[str, Any]], assets: Sequence[str], policy: HrefPolicy, spec: StacSpec
) -> None:
    pairs = [
        (f"asset '{k}' of STAC item '{it['id']}'", str(it["assets"][k]["href"]))
        for it in items
        for k in assets
    ]
    for what, href in pairs:
        check_href(href, policy, what=what)
    if os.environ.get(ENV_PROBE_REDIRECTS, "1") == "0":
        return
    remote = [(w, h) for w, h in pairs if urlsplit(h).scheme in {"http", "https"}]
    if not remote:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:
        list(
            pool.map(
                lambda wh: check_redirects(
                    wh[1], policy, what=wh[0], timeout_s=spec.timeout_s, retries=spec.max_retries
                ),
                remote,
            )
        )


def self_href(item: dict[str, Any]) -> str | None:
    """The item's ``self`` link href, if any."""
    for lk in item.get("links", []):
        if lk.get("rel") == "self":
            return str(lk["href"])
    return None
