"""The API reference: every public name has a docstring, an example where the contract asks for one, and
an entry on its module's page of the docs site (docs/reference/, rendered by mkdocstrings)."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
REFERENCE = ROOT / "docs" / "reference"
# module -> whether each of its public names needs an example in its docstring
PUBLIC = {
    "transferkit": True,
    "transferkit.data": True,
    "transferkit.training": False,
    "transferkit.tasks": False,
    "transferkit.viz": False,
    "transferkit.viz.report": False,
    "transferkit.interpret": False,
}


def _public(module: str) -> list[str]:
    return [name for name in importlib.import_module(module).__all__ if not name.startswith("__")]


def _constant_docstrings() -> dict[str, str]:
    """``NAME -> docstring`` for every module-level constant in the package that has one (the string
    right after the assignment, which mkdocstrings shows)."""
    found: dict[str, str] = {}
    for path in (ROOT / "transferkit").rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for node, after in zip(body, body[1:]):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            doc = (
                after.value.value
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                else None
            )
            if isinstance(doc, str):
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = doc
    return found


def _docstring(module: str, name: str, constants: dict[str, str]) -> str:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return inspect.getdoc(obj) or ""
    return constants.get(name, "")


def _entries() -> set[str]:
    return {
        m for page in REFERENCE.glob("*.md") for m in re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M)
    }


@pytest.mark.parametrize("module", list(PUBLIC))
def test_every_public_name_has_a_docstring_and_an_example(module: str) -> None:
    constants = _constant_docstrings()
    missing, without_example = [], []
    for name in _public(module):
        doc = _docstring(module, name, constants)
        if not doc.strip():
            missing.append(name)
        elif PUBLIC[module] and ">>>" not in doc:
            without_example.append(name)
    assert not missing, f"{module}: public names without a docstring: {missing}"
    assert not without_example, f"{module}: docstrings without an example (>>>): {without_example}"


@pytest.mark.parametrize("module", list(PUBLIC))
def test_every_public_name_has_a_reference_entry(module: str) -> None:
    entries = _entries()
    absent = [name for name in _public(module) if f"{module}.{name}" not in entries]
    assert not absent, f"{module}: add '::: {module}.NAME' to docs/reference/ for {absent}"


def _registries() -> list:
    from transferkit.models.backbones import BACKBONES
    from transferkit.models.heads import HEADS
    from transferkit.models.necks import NECKS
    from transferkit.tasks import TASKS

    return [BACKBONES, NECKS, HEADS, TASKS]


@pytest.mark.parametrize("module", list(PUBLIC))
def test_the_examples_of_public_names_run(module: str) -> None:
    """Each public class's and function's own examples, run as a reader would: with ``torch`` and the
    public names of transferkit and transferkit.data at hand (``+SKIP`` marks those that need a network).
    Names an example registers are dropped afterwards, so the examples leave the registries as they were."""
    import torch

    import transferkit
    import transferkit.data

    public = {name: getattr(m, name) for m in (transferkit, transferkit.data) for name in m.__all__}
    failed = []
    for name in _public(module):
        obj = getattr(importlib.import_module(module), name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        globs = {**vars(importlib.import_module(obj.__module__)), **public, "torch": torch}
        saved = [dict(registry._entries) for registry in _registries()]
        try:
            for test in doctest.DocTestFinder(recurse=False).find(obj, name, globs=globs):
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
                report: list[str] = []
                runner.run(test, out=report.append)
                if runner.failures:
                    failed.append("".join(report))
        finally:
            for registry, entries in zip(_registries(), saved):
                registry._entries.clear()
                registry._entries.update(entries)
    assert not failed, "\n".join(failed)


def test_reference_entries_name_public_objects_only() -> None:
    """An entry for a name that is gone (renamed, made private) fails here, not only in mkdocs."""
    for entry in _entries():
        module, _, name = entry.rpartition(".")
        if module in PUBLIC:
            assert name in _public(module), f"docs/reference/ documents {entry}, which is not public"
        else:
            assert entry in PUBLIC, f"docs/reference/ documents {entry}, not a public module or name"


def test_the_quickstart_notebook_is_saved_without_outputs() -> None:
    notebook = ROOT / "examples" / "quickstart.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)
    source = "".join("".join(cell["source"]) for cell in code)
    for step in ("build_model(", ".freeze(", "freeze_summary()", ".fit(", ".predict(", "plot_history("):
        assert step in source, f"the quick start lost its {step} step"
