"""Compute: the optional GPU path (cupy/kvikio) and dask.distributed clusters."""
