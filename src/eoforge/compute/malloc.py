"""Fewer glibc malloc arenas: the resident peak of long strip-by-strip runs, not their speed.

glibc gives each thread that contends for the heap an arena of its own, up to 8 per CPU. In a
whole-tile prediction, zarr's decode threads, ONNX Runtime's pool and rasterio's writers each
free and reallocate chunk-sized buffers in their own arenas; the freed space stays resident and
scattered, so RSS creeps up strip after strip though the live data stay bounded. One arena per
usable CPU keeps the parallelism and lets the freed space be reused: measured on a 10980 px tile
(2 CPUs, ``eoforge predict``), peak RSS 1932 -> 1780 MB with the infer stage 48.4 vs 48.6 s.

``EOFORGE_MALLOC_ARENAS`` overrides the count (``0``: leave glibc's default). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from eoforge.compute.cpus import usable_cpus

__all__ = ["limit_malloc_arenas", "usable_cpus"]

_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(count: int | None = None) -> int:
    """Cap glibc's malloc arenas for threads created from now on.

    Args:
        count: arenas; default ``EOFORGE_MALLOC_ARENAS`` or else one per usable CPU (at least 2).

    Returns:
        The cap set, or 0 where nothing was changed (``0`` asked for, not glibc, or mallopt
        refused).
    """
    if count is None:
        raw = os.environ.get("EOFORGE_MALLOC_ARENAS", "").strip()
        try:
            count = int(raw) if raw else max(2, usable_cpus())
        except ValueError:
            count = max(2, usable_cpus())  # a malformed tuning knob must not break imports
    if count <= 0 or not hasattr(os, "confstr"):
        return 0
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return 0
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return count if libc.mallopt(_M_ARENA_MAX, count) == 1 else 0
    except (OSError, ValueError, AttributeError):
        return 0
