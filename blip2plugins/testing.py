"""A test kit for plugin authors: run a plugin in-process beside the core and nothing else.

:func:`registered` registers a plugin for the length of a ``with`` block, with every entry-point
plugin left out (``BLIP2_PLUGINS=""``), so a test sees the built-in plugins and yours, whatever else
is installed. :func:`plugin_fixture` makes the same a pytest fixture, and :func:`run_blip2` runs the
``blip2`` command in-process::

    import blip2_hello
    from blip2plugins.plugins import model_presets
    from blip2plugins.testing import registered

    def test_preset():
        with registered(blip2_hello, "hello"):
            assert "hello-demo" in model_presets()
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import plugins

if TYPE_CHECKING:
    from click.testing import Result as CliResult

__all__ = ["plugin_fixture", "registered", "run_blip2"]


@contextmanager
def registered(plugin: ModuleType | object, name: str) -> Iterator[None]:
    """Within the block, the plugins are the built-in ones and ``plugin`` (registered as ``name``).

    ``BLIP2_PLUGINS`` is set to ``""`` and ``BLIP2_BLOCK_PLUGINS`` removed for the block; both are
    restored after it, and the plugin manager is rebuilt from the environment on its next use.
    A plugin that is refused raises :class:`~blip2plugins.errors.PluginError` on entry.
    """
    saved = {variable: os.environ.get(variable) for variable in (plugins.ENV_ALLOW, plugins.ENV_BLOCK)}
    os.environ[plugins.ENV_ALLOW] = ""
    os.environ.pop(plugins.ENV_BLOCK, None)
    plugins.reset()
    try:
        plugins.register_plugin(plugin, name=name)
        yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
        plugins.reset()


def plugin_fixture(plugin: ModuleType | object, name: str) -> Callable[..., Any]:
    """A pytest fixture that runs each test using it inside :func:`registered` (plugin, name).

    Assign it in a ``conftest.py``; the variable's name is the fixture's::

        blip2_plugin = plugin_fixture(blip2_hello, "hello")
    """
    import pytest

    @pytest.fixture
    def fixture() -> Iterator[None]:
        with registered(plugin, name):
            yield

    return fixture


def run_blip2(*args: str) -> CliResult:
    """Run ``blip2 ARGS...`` in-process with the plugins registered now; returns click's result
    (``exit_code``, ``output``, ``exception``)."""
    from click.testing import CliRunner

    from .cli import build_cli

    return CliRunner().invoke(build_cli(), list(args))
