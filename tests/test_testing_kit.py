"""``blip2plugins.testing``: a plugin registered beside the core alone, and the environment restored."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Callable

import pytest

from blip2plugins import ModelPreset, hookimpl, plugins
from blip2plugins.errors import PluginError
from blip2plugins.testing import plugin_fixture, registered, run_blip2

@hookimpl
def register_models(register: Callable[[ModelPreset], None]) -> None:
    register(ModelPreset(name="kit-preset", source="org/kit"))


KIT = SimpleNamespace(register_models=register_models)
kit_plugin = plugin_fixture(KIT, "kit")


def _loaded() -> set[str]:
    return {info.name for info in plugins.plugin_info() if info.status == "loaded"}


@pytest.mark.usefixtures("fresh_plugins")
def test_registered_loads_the_core_and_the_plugin_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugins.ENV_ALLOW, "label-studio")
    monkeypatch.setenv(plugins.ENV_BLOCK, "blip2plugins.presets")
    with registered(KIT, "kit"):
        assert os.environ[plugins.ENV_ALLOW] == "" and plugins.ENV_BLOCK not in os.environ
        assert _loaded() == {*plugins.DEFAULT_PLUGINS, "kit"}
        assert {"demo", "kit-preset"} <= set(plugins.model_presets())
    assert os.environ[plugins.ENV_ALLOW] == "label-studio"
    assert os.environ[plugins.ENV_BLOCK] == "blip2plugins.presets"
    assert "kit" not in _loaded() and "blip2plugins.presets" not in _loaded()


@pytest.mark.usefixtures("fresh_plugins")
def test_registered_restores_unset_variables_and_the_plugins_after_an_error() -> None:
    with pytest.raises(ZeroDivisionError), registered(KIT, "kit"):
        1 / 0
    assert plugins.ENV_ALLOW not in os.environ and plugins.ENV_BLOCK not in os.environ
    assert "kit" not in _loaded()


@pytest.mark.usefixtures("fresh_plugins")
def test_a_refused_plugin_raises_on_entry() -> None:
    misspelt = SimpleNamespace(register_model=hookimpl(lambda register: None))
    with pytest.raises(PluginError, match="plugin 'typo' is refused: it implements register_model"):
        with registered(misspelt, "typo"):
            pass  # pragma: no cover
    assert plugins.ENV_ALLOW not in os.environ


@pytest.mark.usefixtures("kit_plugin")
def test_plugin_fixture_registers_for_the_test() -> None:
    assert "kit-preset" in plugins.model_presets()
    assert _loaded() == {*plugins.DEFAULT_PLUGINS, "kit"}


@pytest.mark.usefixtures("kit_plugin")
def test_run_blip2_runs_the_command_with_the_plugin() -> None:
    listed = run_blip2("models")
    assert listed.exit_code == 0, listed.output
    assert "kit-preset" in listed.output
