"""Every benchmark module at least compiles: most are too heavy for the suite, so a syntax error
in one would otherwise only show when somebody runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_compiles(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")
