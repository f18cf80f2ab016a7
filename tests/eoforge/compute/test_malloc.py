"""The malloc arena cap set when eoforge is imported (eoforge.compute.malloc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eoforge.compute.malloc import limit_malloc_arenas

GLIBC = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def _child(env: dict[str, str]) -> str:
    code = "import eoforge.compute.malloc as m, eoforge; print(m.limit_malloc_arenas())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_cap_defaults_to_usable_cpus_and_follows_the_environment() -> None:
    assert _child({"EOFORGE_MALLOC_ARENAS": ""}) == str(max(2, len(os.sched_getaffinity(0))))
    assert _child({"EOFORGE_MALLOC_ARENAS": "3"}) == "3"
    assert _child({"EOFORGE_MALLOC_ARENAS": "0"}) == "0"  # glibc's own default kept
    # a malformed knob falls back to the default rather than breaking `import eoforge`
    assert _child({"EOFORGE_MALLOC_ARENAS": "many"}) == str(max(2, len(os.sched_getaffinity(0))))


def test_zero_changes_nothing() -> None:
    assert limit_malloc_arenas(0) == 0
