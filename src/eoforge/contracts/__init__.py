"""Data contracts: contracts/definitions/*.yaml as great-expectations suites, enforced per stage."""
