"""Operations: Prefect deployments and the zombie-run reaper."""
