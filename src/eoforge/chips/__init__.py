"""Chips: windows sampled from the cube, split by tile/block/date, stored in Zarr with an index."""
