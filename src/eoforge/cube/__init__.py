"""The data cube: odc-stac loads of STAC items into Zarr v3, per MGRS tile, and reading it back."""
