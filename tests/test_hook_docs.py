"""Every hook spec is documented in docs/plugins.md and exercised by a ``test_hook_<name>...`` test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from blip2plugins import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec"))
DOC_SECTIONS = re.findall(r"^## ([a-z_]+)\s*$", (ROOT / "docs" / "plugins.md").read_text(), flags=re.MULTILINE)
TEST_NAMES = [
    node.name
    for path in sorted((ROOT / "tests").rglob("test_*.py"))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_hook_")
]


def test_hook_specs_are_found() -> None:
    assert {"register_models", "process_result", "training_finished"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docs_section(hook: str) -> None:
    assert hook in DOC_SECTIONS, f"docs/plugins.md has no '## {hook}' section"


def test_every_hook_like_docs_section_names_a_hook() -> None:
    assert sorted(set(DOC_SECTIONS) - set(HOOKS)) == []


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook: str) -> None:
    assert any(name == f"test_hook_{hook}" or name.startswith(f"test_hook_{hook}_") for name in TEST_NAMES), (
        f"no test under tests/ is named test_hook_{hook}..."
    )
