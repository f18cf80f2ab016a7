"""The CPUs this process may use: its affinity mask and its cgroup's CPU quota.

A container limited with ``docker run --cpus 2`` or a Kubernetes CPU limit sees every core of
its host (``os.cpu_count()``, the affinity mask) but may only use two of them: the kernel's CFS
quota throttles the whole cgroup once its threads have used ``quota`` microseconds of CPU in a
``period``. OpenVINO, ONNX Runtime and torch size their thread pools from the cores they see, so
on a 64-core node a 2-CPU pod would run dozens of inference threads that are throttled in turn.
Here the quota is read the way the Linux kernel documents it, cgroup v2 ``cpu.max`` and cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, along the process's cgroup path up to the
hierarchy's mount (the tightest limit wins), found through ``/proc/self/cgroup`` and
``/proc/self/mountinfo``; a fractional quota is rounded down (at least 1).

``EOFORGE_CPUS`` overrides the count (a positive integer).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["affinity_cpus", "cgroup_cpu_quota", "cpu_limit", "usable_cpus"]

ENV = "EOFORGE_CPUS"


def affinity_cpus() -> int:
    """The CPUs of this process's affinity mask (all the machine shows where there is none):
    the cores a runtime that pins its threads spreads them over."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _mounts(mountinfo: Path) -> list[tuple[str, Path, str, set[str]]]:
    """(root, mount point, fstype, super options) of each cgroup mount."""
    out = []
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        out.append((fields[3], Path(fields[4]), tail[0], set(tail[2].split(","))))
    return out


def _cgroup_dirs(proc_cgroup: Path, mountinfo: Path) -> list[tuple[str, Path, Path]]:
    """(version, mount point, the process's cgroup folder) for the cgroups that hold a CPU
    quota: the v2 hierarchy and the v1 ``cpu`` controller."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    mounts = _mounts(mountinfo)
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            version, want = "v2", [m for m in mounts if m[2] == "cgroup2"]
        elif "cpu" in controllers.split(","):
            version, want = "v1", [m for m in mounts if m[2] == "cgroup" and "cpu" in m[3]]
        else:
            continue
        for root, point, _, _ in want:
            inside = path == root or path.startswith(root.rstrip("/") + "/")
            rel = os.path.relpath(path, root) if inside else "."
            folder = (point / rel).resolve() if rel != "." else point
            # a cgroup path from outside the container's namespace: its mount is its own cgroup
            found.append((version, point, folder if folder.is_dir() else point))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_at(version: str, folder: Path) -> float | None:
    """CPUs one cgroup folder's quota allows, None for no quota (or no readable file)."""
    if version == "v2":
        raw = _read(folder / "cpu.max")
        if raw is None:
            return None
        parts = raw.split()
        if len(parts) != 2 or parts[0] == "max":
            return None
        quota, period = parts
    else:
        quota = _read(folder / "cpu.cfs_quota_us") or "-1"
        period = _read(folder / "cpu.cfs_period_us") or "0"
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_quota(
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> float | None:
    """CPUs the process's cgroup quota allows (``quota / period``, the tightest of its cgroup
    and every parent up to the mount), or None where no cgroup sets one."""
    limits = []
    for version, point, folder in _cgroup_dirs(proc_cgroup, mountinfo):
        level = folder
        while True:
            quota = _quota_at(version, level)
            if quota is not None:
                limits.append(quota)
            if level == point or point not in level.parents:
                break
            level = level.parent
    return min(limits) if limits else None


def _from_env() -> int | None:
    """``EOFORGE_CPUS`` when it is a positive integer (anything else is ignored)."""
    try:
        value = int(os.environ.get(ENV, "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


@functools.cache
def _usable() -> int:
    forced = _from_env()
    if forced is not None:
        return forced
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask, its cgroup's CPU quota (rounded down,
    at least 1), or ``EOFORGE_CPUS``. Read once per process."""
    return _usable()


def cpu_limit() -> int | None:
    """:func:`usable_cpus` where it is below the CPUs the machine shows (a quota, an affinity
    mask or ``EOFORGE_CPUS``), else None: the inference runtimes keep their own defaults (one
    thread per physical core) on a machine that is theirs."""
    cpus = usable_cpus()
    return cpus if cpus < (os.cpu_count() or cpus) or _from_env() is not None else None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_usable.cache_clear)
