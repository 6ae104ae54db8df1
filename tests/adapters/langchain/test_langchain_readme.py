"""adapters/langchain/README.md as a test: every python snippet runs, in order, from the repository root.

Each block runs in a namespace of its own holding ``llm``, a scripted tool-calling chat model (the
README's agent snippet takes any such model).
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "adapters" / "langchain" / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_the_snippets_are_found() -> None:
    assert len(BLOCKS) >= 3 and any("ChatBlip2(" in block for block in BLOCKS)


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_snippet_runs(number: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    scripted = runpy.run_path(str(ROOT / "examples" / "langchain_agent.py"))["ScriptedLLM"]
    exec(compile(BLOCKS[number], f"{README.name}, python snippet {number + 1}", "exec"),
         {"__name__": "__readme__", "llm": scripted(messages=iter([]))})
