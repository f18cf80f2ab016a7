"""STAC access: search an API robustly; serve a static catalog locally; normalise items.

Catalogs are input from others: item files and API answers are validated (a malformed one is
an :class:`~eoforge.errors.InputError` naming it), every asset href that will be read must pass
the :class:`~eoforge.io.hrefs.HrefPolicy`, API pages may only come from the API's own host, and
transient failures (429 with ``Retry-After``, 5xx, resets, timeouts, truncated bodies) are
retried a bounded number of times before a :class:`~eoforge.errors.TransientError`.

This module holds the search client (:func:`search_items`, :func:`search_policy`). Item-level
helpers (:func:`item_tile`, :func:`item_epsg`, :func:`crosses_antimeridian`,
:func:`validate_item`, :func:`self_href`) live in :mod:`eoforge.stac.items`, the local rustac
API (:func:`prepare_served_catalog`, :class:`LocalStacServer`) in :mod:`eoforge.stac.server`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from eoforge.config import StacSpec, check_bbox
from eoforge.errors import InputError, TransientError
from eoforge.io.hrefs import HrefPolicy, check_href, check_redirects
from eoforge.io.redact import redact, redact_url
from eoforge.stac.aoi import aoi_geometry, items_meeting
from eoforge.stac.items import (
    item_tile,
    validate_item,
)

__all__ = [
    "ENV_PROBE_REDIRECTS",
    "search_items",
    "search_policy",
]

_RETRY_STATUS = (429, 500, 502, 503, 504)
#: Set to ``0`` to skip following asset redirects during search (see :func:`search_items`).
ENV_PROBE_REDIRECTS = "EOFORGE_PROBE_REDIRECTS"


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
    try:
        check_bbox(spec.bbox)
    except ValueError as exc:
        raise InputError(f"{exc}.") from exc


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
    import shapely.geometry
    from pystac import STACError
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    _check_search_box(spec)
    aoi = aoi_geometry(spec)
    policy = policy or search_policy(spec, api_url)
    where = f"STAC API {redact_url(api_url)}"
    try:
        # Client.open hands its own ``timeout`` (default None: wait forever) to the IO it is
        # given, replacing the one the IO was built with: pass the deadline here too.
        client = Client.open(
            api_url, stac_io=_stac_io(spec, api_url, policy), timeout=spec.timeout_s
        )
        search = client.search(
            collections=[spec.collection],
            bbox=spec.bbox,
            intersects=shapely.geometry.mapping(aoi) if spec.aoi is not None else None,
            datetime=spec.datetime,
            max_items=spec.max_items,
            ids=list(ids) if ids else None,
        )
        # An item that does not meet the area (a server answering by bbox only) never blocks a run.
        items = items_meeting([it.to_dict(transform_hrefs=False) for it in search.items()], aoi)
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
