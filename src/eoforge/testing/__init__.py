"""Real local services for tests and benchmarks, as Prefect and pystac-client ship theirs.

- :mod:`eoforge.testing.prefect_server`: ``prefect server start`` + ``eoforge deploy`` + process
  workers, and a small REST client for them;
- :func:`served_catalog`: ``rustac serve`` over a local catalog (the product's own,
  :mod:`eoforge.stac.server`);
- :mod:`eoforge.testing.s3`: ``moto_server`` (S3);
- :mod:`eoforge.testing.processes`: free ports and process groups.

Everything runs on loopback and stops with its context (or :func:`stop_process`). Nothing here
imports Prefect, torch or a web framework: each service is a separate process.
"""

from eoforge.stac.server import served_catalog
from eoforge.testing.prefect_server import (
    REQUEST_TIMEOUT_S,
    PrefectServer,
    eoforge_deploy,
    launch_prefect_server,
    prefect_services,
    rest_call,
    start_prefect_server,
)
from eoforge.testing.processes import free_port, start_process, stop_process
from eoforge.testing.s3 import s3_server

__all__ = [
    "REQUEST_TIMEOUT_S",
    "PrefectServer",
    "eoforge_deploy",
    "free_port",
    "launch_prefect_server",
    "prefect_services",
    "rest_call",
    "s3_server",
    "served_catalog",
    "start_prefect_server",
    "start_process",
    "stop_process",
]
