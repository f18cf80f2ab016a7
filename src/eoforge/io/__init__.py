"""Storage: atomic staged writes, fsspec/Zarr stores, the href policy, secret redaction."""
