"""Prefect flows: compose the tasks in ``tasks/``; no domain logic here."""
