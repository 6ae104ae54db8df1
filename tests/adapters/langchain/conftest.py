"""The LangChain adapter tests: skipped unless the adapter and its test extra are installed.

LangChain's standard suites have ``async def`` tests without asyncio marks (they expect
``asyncio_mode = "auto"``). This folder marks its coroutine tests itself, so the project keeps
pytest-asyncio's default strict mode everywhere else.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any, Generator

import pytest

if importlib.util.find_spec("langchain_tests") is None or importlib.util.find_spec("blip2plugins_langchain") is None:
    # Not installed (pip install -e 'adapters/langchain[test]'): nothing here can run.
    collect_ignore_glob = ["test_*.py"]


@pytest.hookimpl(hookwrapper=True, trylast=True)  # innermost: before pytest-asyncio turns marked items into async ones
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> Generator[None, Any, None]:
    outcome = yield
    if not inspect.iscoroutinefunction(obj):
        return
    items = outcome.get_result()
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, pytest.Function):
            item.add_marker(pytest.mark.asyncio)
