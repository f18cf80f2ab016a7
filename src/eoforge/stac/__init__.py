"""STAC: search a catalog, normalise its items, serve a local catalog (rustac), watch for new items."""
