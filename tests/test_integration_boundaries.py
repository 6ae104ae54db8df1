"""The integrations in ``adapters/`` reach the core only through its public API, as a third party's would."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "adapters").glob("*/blip2plugins_*/**/*.py"))
#: Core functions that take the host's private ``LoadedModel``: integrations use Host methods instead.
LOADED_MODEL_FUNCTIONS = {"render_chat", "fit_chat", "room_for_prompt", "load", "attach_adapter", "detach_adapter"}


def _problems(source: Path) -> list[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blip2plugins") \
                and not (node.module or "").startswith("blip2plugins_"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: imports the private {node.module}.{alias.name}")
                if node.module in ("blip2plugins.prompts", "blip2plugins.models") and alias.name in LOADED_MODEL_FUNCTIONS:
                    found.append(f"line {node.lineno}: imports {node.module}.{alias.name}, which takes the host's "
                                 "LoadedModel")
        if isinstance(node, ast.Attribute) and node.attr == "loaded" and _is_host(node.value):
            found.append(f"line {node.lineno}: reads a Host's private .loaded")
    return found


def _is_host(node: ast.expr) -> bool:
    """``host``, ``x.host``, ``get_host()`` or ``x.get_host(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name in ("host", "get_host", "shared_host")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT / "adapters")))
def test_integrations_use_only_the_public_host_api(source: Path) -> None:
    assert _problems(source) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from blip2plugins.commands import _load_host\nfrom blip2plugins.prompts import fit_chat\n"
                   "def f(host, self):\n    host.loaded.require('ask')\n    return self.get_host().loaded\n")
    assert sorted(_problems(bad)) == [
        "line 1: imports the private blip2plugins.commands._load_host",
        "line 2: imports blip2plugins.prompts.fit_chat, which takes the host's LoadedModel",
        "line 4: reads a Host's private .loaded", "line 5: reads a Host's private .loaded"]
    assert SOURCES, "no integration sources found"


def _sibling_imports(source: Path) -> set[str]:
    """The modules of the same package that ``source`` imports anywhere (in functions too), except
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(source.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in typing_only:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("package", sorted({source.parent for source in SOURCES}), ids=lambda p: p.name)
def test_an_integrations_modules_import_each_other_one_way(package: Path) -> None:
    graph = {source.stem: _sibling_imports(source) for source in package.glob("*.py")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done or module not in graph:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("source", sorted((ROOT / "blip2plugins").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_modules_import_no_private_names_of_each_other(source: Path) -> None:
    """A name another module needs is public (documented), as in the integrations."""
    tree = ast.parse(source.read_text())
    private = [f"line {node.lineno}: {alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("blip2plugins"))
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []
