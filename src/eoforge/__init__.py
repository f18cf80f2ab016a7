"""eoforge: STAC imagery to trained, exported and continuously applied geospatial ML models.

The domain library: every stage is plain Python (no Prefect import); ``flows/`` and ``tasks/``
add orchestration on top.
"""

from eoforge.config import RunSpec, load_run_spec
from eoforge.errors import (
    ContractViolation,
    EoforgeError,
    InputError,
    InternalError,
    TransientError,
)

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
