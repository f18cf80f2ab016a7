"""Signed asset hrefs: catalogs whose assets need a short-lived token to be read.

Planetary Computer serves assets from Azure Blob Storage that are read with a SAS token; the
``planetary-computer`` package fetches one per storage container from its token endpoint
(``PC_SDK_SAS_URL``, default Microsoft's; ``PC_SDK_SUBSCRIPTION_KEY`` for higher rate limits)
and appends it to each href. Items are signed just before their pixels are read, never before
cache keys and provenance are computed (tokens change on every request), so a signed run keeps
the store keys of an unsigned one and no token is ever written to disk.

The package's token request has no deadline of its own; eoforge gives it ``timeout_s`` per
signing pass, so a token endpoint that never answers fails the run instead of hanging it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from eoforge.errors import InputError, TransientError
from eoforge.io.redact import redact

__all__ = ["SIGNERS", "sign_items"]

#: Names accepted by ``stac.sign``.
SIGNERS = ("planetary-computer",)


def _sign_all(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    import planetary_computer

    return [dict(planetary_computer.sign(copy.deepcopy(dict(it)))) for it in items]


def sign_items(
    items: Sequence[dict[str, Any]], signer: str | None, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Copies of ``items`` whose asset hrefs carry the signer's token (``items`` unchanged).

    Args:
        items: STAC items as dicts.
        signer: one of :data:`SIGNERS`, or None (the items are returned as they are).
        timeout_s: deadline for the whole signing pass (token requests are cached per
            storage container, so one request per container at most).

    Raises:
        InputError: an unknown signer, or the token endpoint refuses (401/403/404).
        TransientError: the token endpoint did not answer in time or keeps failing.
    """
    if signer is None:
        return list(items)
    if signer not in SIGNERS:
        raise InputError(f"stac.sign '{signer}' is not one of {list(SIGNERS)}; fix the spec.")
    import requests

    # A daemon thread: the package's token request has no timeout, and a worker of a
    # ThreadPoolExecutor would be joined at interpreter exit, hanging the process after the
    # error below was reported.
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["items"] = _sign_all(items)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="eoforge-sign", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TransientError(
            f"the Planetary Computer token endpoint did not answer within {timeout_s:.0f} s "
            "(PC_SDK_SAS_URL); check the network, then retry."
        )
    exc = outcome.get("error")
    if exc is None:
        signed: list[dict[str, Any]] = outcome["items"]
        return signed
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        text = redact(str(exc))[:200]
        if status in (401, 403, 404):
            raise InputError(
                f"the Planetary Computer token endpoint refused to sign ({text}); check "
                "PC_SDK_SUBSCRIPTION_KEY and that the collection's assets are on Planetary "
                "Computer storage."
            ) from exc
        raise TransientError(
            f"the Planetary Computer token endpoint keeps failing ({text}); retry later."
        ) from exc
    if isinstance(exc, requests.RequestException | ValueError):
        raise TransientError(
            f"signing asset hrefs failed ({type(exc).__name__}: {redact(str(exc))[:200]}); "
            "retry later."
        ) from exc
    raise exc
