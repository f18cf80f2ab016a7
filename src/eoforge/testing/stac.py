"""A real STAC API on loopback for tests and benchmarks: ``rustac serve`` over a local catalog
(the product's own :class:`~eoforge.stac.server.LocalStacServer`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eoforge.stac.server import LocalStacServer, prepare_served_catalog

__all__ = ["served_catalog"]


@contextmanager
def served_catalog(
    catalog_dir: Path, workdir: Path, port: int = 0, log_path: Path | None = None
) -> Iterator[LocalStacServer]:
    """``rustac serve`` over the collection and items in ``catalog_dir``.

    The served copies (absolute asset hrefs, a collection without item links) are written to
    ``workdir``; the server stops on exit.
    """
    files = prepare_served_catalog(catalog_dir, workdir)
    with LocalStacServer(files, port=port, log_path=log_path) as server:
        yield server
