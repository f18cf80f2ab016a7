"""The loopback servers of ``tests/faults/proxy.py``, importable as ``eoforge_fault_proxy``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "eoforge_fault_proxy" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "eoforge_fault_proxy", Path(__file__).parents[1] / "faults" / "proxy.py"
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["eoforge_fault_proxy"] = _module
    _spec.loader.exec_module(_module)
