"""Data contracts: data-contracts/*.yaml as great-expectations suites, enforced per stage."""
