"""The Prefect layer on top of the domain library: ``tasks`` (retries, caching), ``flows``
(composition) and ``deployments/prefect.yaml`` (configuration). The only wing that imports
Prefect; nothing in eoforge imports it (checked by ``lint-imports``)."""
