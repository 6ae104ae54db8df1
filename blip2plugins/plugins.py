"""The plugin manager: default plugins, external plugins from entry points, and hook helpers.

External plugins are distributions that declare an entry point in the ``blip2plugins`` group. They
are loaded once, lazily, the first time anything asks for the plugin manager. Two environment
variables choose which: ``BLIP2_PLUGINS`` (comma-separated entry-point names: load only these)
and ``BLIP2_BLOCK_PLUGINS`` (comma-separated names: never load these). Built-in default plugins
are always loaded; block one by its name (e.g. ``blip2plugins.presets``) to replace it.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .types import AdapterVersion, ImageSource, ModelPreset, Result, ServingAdapter

ENTRY_POINT_GROUP = hookspecs.PROJECT
ENV_ALLOW = "BLIP2_PLUGINS"
ENV_BLOCK = "BLIP2_BLOCK_PLUGINS"
DEFAULT_PLUGINS = (
    "blip2plugins.presets",
    "blip2plugins.default_sources",
    "blip2plugins.commands",
    "blip2plugins.demo.commands",
    "blip2plugins.training.commands",
    "blip2plugins.adapter_commands",
    "blip2plugins.index_commands",
)


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its name, its distribution's version and the hooks it implements."""

    name: str
    version: str | None
    hooks: tuple[str, ...]
    builtin: bool


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_versions: dict[str, str | None] = {}
_collected: dict[str, list[Any]] = {}  # what each register_* hook gave, until the plugins change


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _register(pm: pluggy.PluginManager, plugin: ModuleType | object, name: str) -> None:
    """Register one plugin, refusing it when it implements a hook that no spec declares."""
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is refused: {exc}") from None
    unknown = [
        hook_name for hook_name, caller in vars(pm.hook).items()
        if isinstance(caller, pluggy.HookCaller) and not caller.has_spec()
        and any(impl.plugin is plugin for impl in caller.get_hookimpls())
    ]
    if unknown:
        pm.unregister(plugin)
        raise PluginError(
            f"plugin {name!r} is refused: it implements {', '.join(sorted(unknown))}, which matches no "
            f"hook of blip2plugins (known hooks: {', '.join(sorted(_spec_names()))})"
        )


def _spec_names() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "blip2plugins_spec")]


def _build() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = _names(ENV_BLOCK) or set()
    allowed = _names(ENV_ALLOW)
    for module_name in DEFAULT_PLUGINS:
        if module_name not in blocked:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise PluginError(f"built-in plugin {module_name!r} failed to import: {exc!r}") from exc
            _register(pm, module, module_name)
            _versions[module_name] = None
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if name in blocked or (allowed is not None and name not in allowed) or pm.has_plugin(name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken third-party plugin: name it, and how to skip it
            raise PluginError(
                f"plugin {name!r} ({entry_point.value}) failed to import: {exc!r}; "
                f"set {ENV_BLOCK}={name} to skip it"
            ) from exc
        _register(pm, plugin, name)
        _versions[name] = entry_point.dist.version if entry_point.dist else None
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _versions.clear()
            _collected.clear()
            _manager = _build()
        return _manager


def reset() -> None:
    """Forget the plugin manager so the next use reloads plugins (after changing the environment)."""
    global _manager
    with _lock:
        _manager = None


def register_plugin(plugin: ModuleType | object, name: str) -> None:
    """Register an in-process plugin (a module or an object with hook implementations)."""
    pm = get_plugin_manager()
    with _lock:
        _register(pm, plugin, name)
        _versions[name] = None
        _collected.clear()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered by name."""
    pm = get_plugin_manager()
    with _lock:
        pm.unregister(name=name)
        _versions.pop(name, None)
        _collected.clear()


def _collect(hook_name: str) -> list[Any]:
    """What a ``register_*`` hook registers, in call order; called once until the plugins change."""
    with _lock:
        if hook_name not in _collected:
            items: list[Any] = []
            getattr(get_plugin_manager().hook, hook_name)(register=items.append)
            _collected[hook_name] = items
        return list(_collected[hook_name])


def model_presets() -> dict[str, ModelPreset]:
    """Every model preset by name and alias; a later registration of a name replaces an earlier one."""
    presets: dict[str, ModelPreset] = {}
    # pluggy calls the most recently registered plugin first: reverse so plugins override built-ins.
    for preset in reversed(_collect("register_models")):
        for key in (preset.name, *preset.aliases):
            presets[key] = preset
    return presets


def image_sources() -> list[ImageSource]:
    """Every registered image source, plugins before built-ins."""
    return _collect("register_image_sources")


def serving_adapters() -> dict[str, ServingAdapter]:
    """Every serving adapter by name."""
    return {adapter.name: adapter for adapter in reversed(_collect("register_adapters"))}


def process_result(task: str, result: Result) -> Result:
    """Pass a successful result through every ``process_result`` implementation, chained.

    Implementations are called as plain functions: hook wrappers are not supported for this hook.
    """
    if not result.ok:
        return result
    caller = get_plugin_manager().hook.process_result
    for impl in reversed(caller.get_hookimpls()):  # pluggy's own call order
        arguments = {"task": task, "result": result}
        new = impl.function(**{name: arguments[name] for name in impl.argnames})
        if new is not None:
            result = new
    return result


def notify(event: str, adapter: AdapterVersion) -> None:
    """Fire an adapter event hook (``training_finished`` or ``adapter_promoted``) on every plugin."""
    if event not in ("training_finished", "adapter_promoted"):
        raise ValueError(f"unknown adapter event {event!r}")
    getattr(get_plugin_manager().hook, event)(adapter=adapter)


def plugin_info() -> list[PluginInfo]:
    """Every loaded plugin with its version and the hooks it implements, sorted by name."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        infos.append(PluginInfo(name, _versions.get(name), hooks, builtin=name in DEFAULT_PLUGINS))
    return sorted(infos, key=lambda info: info.name)
