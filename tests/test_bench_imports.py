"""The benchmarks stand on their own: no bench script imports a test module."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_bench_script_imports_a_test_module() -> None:
    scripts = sorted(BENCH.glob("*.py"))
    assert scripts
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m == "tests" or m.startswith("tests."))
        for path in scripts
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
