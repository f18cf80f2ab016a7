"""eoforge: STAC imagery to trained, exported and continuously applied geospatial ML models.

The domain library: every stage is plain Python (no Prefect import); ``flows/`` and ``tasks/``
add orchestration on top.
"""

import os

# torch's OpenMP threads busy-wait by default, which halves training speed on a shared
# 2-core machine; it only takes effect if set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ONNX Runtime (>= 1.29 on Linux) writes a device id under ~/.cache and uploads usage events to
# Microsoft from its import on, unless this is set before that import; eoforge's runs do not
# report home unasked (set it to 0 to opt back in). OpenVINO's: eoforge.inference.no_telemetry.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 sends usage events too

from eoforge.compute.malloc import limit_malloc_arenas
from eoforge.config import RunSpec, load_run_spec
from eoforge.errors import (
    ContractViolation,
    EoforgeError,
    InputError,
    InternalError,
    TransientError,
)

# before the native thread pools (zarr, ONNX Runtime, GDAL) start: see eoforge.compute.malloc
limit_malloc_arenas()

__all__ = [
    "ContractViolation",
    "EoforgeError",
    "InputError",
    "InternalError",
    "RunSpec",
    "TransientError",
    "load_run_spec",
]
__version__ = "0.1.0"
