"""Embeddings as data: a self-supervised per-pixel encoder, embedding fields in Zarr (int8 + scale), and what users do with them (few-label classifiers, KMeans, similarity search)."""
