"""Fixtures for flow tests: one real temporary Prefect server for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real temporary Prefect API (SQLite) for every flow test of the session (~9 s once).

    Unlike ephemeral mode, its URL travels with the settings to Dask worker processes, so
    task runs on ``prefect-dask`` report to the same server as their flow.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
