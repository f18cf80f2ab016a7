"""How source rasters are read: GDAL's HTTP behaviour for remote COGs, and what ``s3://``
buckets need (requester pays, anonymous reads, a profile or region, an S3-compatible endpoint),
handed to odc-stac's rasterio configuration for every load.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from eoforge.config import S3ReadSpec

__all__ = ["configure_reads", "gdal_options", "s3_gdal_options"]

# GDAL defaults for remote COGs; an environment variable of the same name wins.
_GDAL_DEFAULTS = {
    # GDAL itself retries 429, 500, 502-504, resets and timeouts with backoff ...
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "120",
    # ... a stalled transfer is cut off instead of hanging the run ...
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    # ... and what it does not retry (a body cut short) is retried by retry_reads. Without this
    # GDAL would remember the failure and fail every later open of the same URL unseen.
    "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/:/vsis3/:/vsigs/:/vsiaz/:/vsiadls/",
    "CPL_VSIL_CURL_USE_HEAD": "NO",  # moto and some signed-URL hosts refuse HEAD
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
}


def gdal_options() -> dict[str, str]:
    """GDAL configuration for reading source rasters: eoforge's defaults, overridden by the
    environment variables of the same name."""
    return {k: os.environ.get(k, v) for k, v in _GDAL_DEFAULTS.items()}


def s3_gdal_options(s3: S3ReadSpec | None) -> dict[str, str]:
    """GDAL ``/vsis3/`` options for ``s3`` (nothing for the default: GDAL's own AWS chain).

    Credentials are never put here: GDAL finds them where the AWS CLI does (environment,
    ``~/.aws``, instance or container role).
    """
    if s3 is None:
        return {}
    options: dict[str, str] = {}
    if s3.requester_pays:
        options["AWS_REQUEST_PAYER"] = "requester"
    if s3.unsigned:
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    if s3.profile:
        options["AWS_PROFILE"] = s3.profile
    if s3.region:
        options["AWS_REGION"] = s3.region
    if s3.endpoint_url:
        parts = urlsplit(s3.endpoint_url)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path
        options["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path-style: bucket names need no DNS
    return options


def configure_reads(s3: S3ReadSpec | None = None) -> None:
    """Set odc-stac's rasterio configuration for the next loads: :func:`gdal_options` plus
    :func:`s3_gdal_options` (odc-stac captures it into each load's graph, so Dask workers read
    with it too)."""
    import odc.stac

    options: dict[str, Any] = {**gdal_options(), **s3_gdal_options(s3)}
    odc.stac.configure_rio(**options)
