"""Scrub secrets from anything eoforge writes or logs: signed URLs and credential values.

Two kinds of secret reach eoforge without anyone asking: signed asset URLs (``?X-Amz-Signature=``,
``?sig=``, ``?token=`` ...) handed out by catalogs such as Planetary Computer, and credentials in
the environment (``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*_PASSWORD``, ``*_KEY``). :func:`redact`
strips query strings and ``user:password@`` from every URL in a text, masks ``key=value`` pairs
that look like signatures, and masks the *values* of secret-looking environment variables
wherever they appear. :func:`install_log_redaction` applies it to every log record.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MASK",
    "install_log_redaction",
    "redact",
    "redact_obj",
    "redact_url",
    "secret_env_values",
]

#: What a secret is replaced with.
MASK = "***"

_SECRET_NAME = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|_KEY$|_KEY_ID$|^KEY$|SAS|SIGNATURE|"
    r"API_?KEY|PRIVATE|SESSION)",
    re.IGNORECASE,
)
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would mask ordinary text
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_SIGNED_PARAM = re.compile(
    r"(?i)\b(x-amz-[a-z-]+|x-goog-[a-z-]+|sig|signature|token|access_token|api_key|apikey|"
    r"password|secret|sas|se|sp|sv|sr|skoid|sktid|skt|ske|sks|skv|credential|awsaccesskeyid|"
    r"policy|key-pair-id|expires)=([^&\s'\"<>#]+)"
)
# a path with a query string outside a full URL, e.g. urllib3's '"GET /a/b.tif?sig=... HTTP/1.1"'
_PATH_QUERY = re.compile(r"(?<![\w:/])(/[^\s?#'\"<>]*)\?[^\s'\"<>]+")
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization|x-api-key|cookie)(['\"]?\s*[:=]\s*['\"]?)([^'\",}\n]+)"
)

T = TypeVar("T")


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (longest first)."""
    env = os.environ if environ is None else environ
    values = {
        v for k, v in env.items() if _SECRET_NAME.search(k) and len(v.strip()) >= _MIN_SECRET_LEN
    }
    return sorted(values, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``url`` without its query string, fragment and ``user:password@`` part."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", url)
    if not parts.scheme or not parts.netloc:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with URLs stripped of query strings and credentials, and secrets masked.

    Args:
        text: anything printable (a message, HTML, JSON text).
        environ: the environment whose secret-looking values are masked (default: os.environ).
    """
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    out = _PATH_QUERY.sub(lambda m: m.group(1), out)
    out = _SIGNED_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", out)
    out = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", out)
    for value in secret_env_values(environ):
        if value in out:
            out = out.replace(value, MASK)
    return out


def redact_obj(obj: T, environ: Mapping[str, str] | None = None) -> T:
    """:func:`redact` every string (keys too) of a JSON-like object; other values unchanged."""
    if isinstance(obj, str):
        return redact(obj, environ)  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        return {  # type: ignore[return-value]
            (redact(k, environ) if isinstance(k, str) else k): redact_obj(v, environ)
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact_obj(v, environ) for v in obj)  # type: ignore[return-value]
    return obj


_installed = False


def install_log_redaction() -> None:
    """Redact every log record of this process from now on (idempotent).

    The log-record factory is wrapped, so records of every logger (eoforge, Prefect,
    pystac-client, botocore, rasterio) are scrubbed before any handler or filter sees them,
    including the text of attached tracebacks.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's error path
            return record
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
