"""Prefect task wrappers around the domain stages (orchestration only: retries, caching, tags)."""
