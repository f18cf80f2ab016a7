"""Fault-injection helpers (``proxy.py``), importable as ``eoforge_fault_proxy`` in these tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_fault_proxy() -> None:
    """Register ``tests/faults/proxy.py`` as the module ``eoforge_fault_proxy`` (once)."""
    if "eoforge_fault_proxy" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "eoforge_fault_proxy", Path(__file__).with_name("proxy.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["eoforge_fault_proxy"] = module
    spec.loader.exec_module(module)


load_fault_proxy()
