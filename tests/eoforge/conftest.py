"""Loud skipping of ``requires_gpu`` tests on machines without a CUDA GPU.

Each such test is skipped with a reason that says why, and the run ends with a banner counting
them, so a CPU-only CI run never passes GPU code silently.
"""

from __future__ import annotations

import pytest

from eoforge.compute.gpu import cuda_device_count

_SKIPPED: list[str] = []


def _no_gpu_reason() -> str | None:
    if cuda_device_count() > 0:
        return None
    return (
        "requires_gpu: no CUDA GPU visible to this process (NVML finds none, or "
        "EOFORGE_DISABLE_GPU / CUDA_VISIBLE_DEVICES hide it); run on a GPU machine with "
        "`pip install .[gpu]` to exercise the GPU path"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _no_gpu_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("requires_gpu"):
            item.add_marker(pytest.mark.skip(reason=reason))
            _SKIPPED.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED:
        terminalreporter.write_sep(
            "!",
            f"{len(_SKIPPED)} GPU test(s) SKIPPED: no CUDA GPU on this machine",
            yellow=True,
            bold=True,
        )
        for nodeid in _SKIPPED:
            terminalreporter.write_line(f"  skipped (requires_gpu): {nodeid}")
