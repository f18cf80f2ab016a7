"""The package layout (docs/architecture.md): a small face at the root, one wing per stage,
small modules, no import cycles. The order of the wings is checked by ``lint-imports``
(``[tool.importlinter]`` in pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

import eoforge

PACKAGE = Path(eoforge.__file__).parent
FACE = {"__init__.py", "cli.py", "errors.py", "py.typed", "config"}
WINGS = {
    "chips",
    "compute",
    "contracts",
    "cube",
    "embeddings",
    "export",
    "inference",
    "io",
    "labels",
    "labelling",
    "ops",
    "orchestration",
    "runs",
    "stac",
    "testing",
    "training",
}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    return {
        ".".join(("eoforge", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """eoforge modules ``module`` imports anywhere in its body (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eoforge"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    found.discard(module)
    return {m for m in found if m in known}


def test_root_holds_only_the_face_and_the_wings() -> None:
    entries = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert entries == FACE | WINGS, f"unexpected: {sorted(entries - FACE - WINGS)}"
    for wing in WINGS | {"config"}:
        assert (PACKAGE / wing / "__init__.py").is_file(), wing


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    too_long = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
    median = sorted(sizes.values())[len(sizes) // 2]
    assert median < 250, median


def test_no_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(m, p, known) for m, p in modules.items()}
    # a package imports its own submodules only to re-export them (eoforge.config, testing)
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") or m.startswith(d + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from eoforge.b import x\n")
    b.write_text("def f():\n    from eoforge.a import y\n")
    known = {"eoforge.a", "eoforge.b"}
    assert _imports("eoforge.a", a, known) == {"eoforge.b"}
    assert _imports("eoforge.b", b, known) == {"eoforge.a"}
