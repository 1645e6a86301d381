"""The house in layers: dependencies run one way, nothing imports in a circle, and no file or function
grows past what a reader holds in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

PACKAGE = Path(__file__).parents[1] / "transferkit"
TOP_LEVEL_MODULES = {
    "__init__.py",
    "errors.py",
    "registry.py",
    "atomic.py",
    "preprocessing.py",
    "inference.py",
}


def test_the_layers_contract_holds() -> None:
    """pyproject's import-linter contract: each package imports only from the layers below it."""
    status = lint_imports(config_filename=str(PACKAGE.parent / "pyproject.toml"), no_cache=True, no_logo=True)
    assert status == 0, "an import breaks the layers (printed above); run lint-imports"


def test_no_module_imports_itself_through_others() -> None:
    """No import cycle between any two modules, counting imports inside functions (typing-only excepted)."""
    graph = grimp.build_graph("transferkit", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_top_level_holds_the_init_and_at_most_five_modules() -> None:
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules <= TOP_LEVEL_MODULES and len(modules - {"__init__.py"}) <= 5, sorted(modules)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 400, (
        f"{path.relative_to(PACKAGE)} has {lines} lines; move a part into a module of its own"
    )


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from ``def`` to its end, its docstring not counted (it is read, not held)."""
    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return lines


def test_no_function_in_training_or_models_is_over_60_lines() -> None:
    long = []
    for folder in ("training", "models"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = _code_lines(node)
                    if lines > 60:
                        long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_no_module_imports_a_private_name_of_another_package() -> None:
    """A leading underscore means "this package's own": other packages use public names only."""
    borrowed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..other import ...
                where = f"{path.relative_to(PACKAGE)}: from {'.' * node.level}{node.module or ''} import"
                borrowed += [
                    f"{where} {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not borrowed, "private names imported across packages:\n" + "\n".join(borrowed)
