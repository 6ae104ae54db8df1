"""The plugin manager: default plugins, external plugins from entry points, and hook helpers.

External plugins are distributions that declare an entry point in the ``blip2plugins`` group. They
are loaded once, lazily, the first time anything asks for the plugin manager. Two environment
variables choose which: ``BLIP2_PLUGINS`` (comma-separated entry-point names: load only these)
and ``BLIP2_BLOCK_PLUGINS`` (comma-separated names: never load these). Built-in default plugins
are always loaded; block one by its name (e.g. ``blip2plugins.presets``) to replace it.

An external plugin that fails to import, or is refused (a hook that matches no spec, a wrapper, a
taken name), is recorded with its error instead of stopping the others. The diagnostics
(:func:`plugin_info`, so ``blip2 plugins`` and ``blip2 --help``) list every such plugin; everything
else (:func:`get_plugin_manager`, so ``Host.load`` and every hook call) refuses to run with one
:class:`PluginError` naming all of them, since a plugin silently missing would change results.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any, Iterator

import pluggy

from . import hookspecs
from .errors import PluginError
from .types import AdapterVersion, ImageSource, ModelPreset, Result, ServeCommand

log = logging.getLogger(__name__)
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
    """One plugin: its name, its distribution's version, the hooks it implements and whether it is
    used: ``status`` is ``"loaded"``, ``"broken"`` (``reason`` holds the error) or ``"not loaded"``
    (installed, but left out by ``BLIP2_PLUGINS`` or ``BLIP2_BLOCK_PLUGINS``, as ``reason`` says)."""

    name: str
    version: str | None
    hooks: tuple[str, ...]
    builtin: bool
    status: str = "loaded"
    reason: str | None = None


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_versions: dict[str, str | None] = {}
#: External plugins that could not be used, by name: (version, the error).
_broken: dict[str, tuple[str | None, str]] = {}
#: Installed external plugins left out by the allow or block list, by name: (version, why).
_skipped: dict[str, tuple[str | None, str]] = {}
#: What each register_* hook gave, per plugin in call order, until the plugins change.
_collected: dict[str, list[tuple[str, list[Any]]]] = {}
#: What each register_* hook's ``register`` callback takes.
_REGISTERS = {"register_models": ModelPreset, "register_image_sources": ImageSource,
              "register_serve_commands": ServeCommand}


def _names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _register(pm: pluggy.PluginManager, plugin: ModuleType | object, name: str) -> None:
    """Register one plugin, refusing it when it implements a hook that no spec declares, wraps a
    hook, or takes a name already registered."""
    if pm.has_plugin(name):
        raise PluginError(f"plugin {name!r} is refused: a plugin of that name is already registered")
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is refused: {exc}") from None
    except ValueError:  # pluggy: this very object is registered under another name
        raise PluginError(f"plugin {name!r} is refused: it is already registered as "
                          f"{pm.get_name(plugin)!r}") from None
    wrappers = sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                      if any(impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)
                             for impl in caller.get_hookimpls()))
    if wrappers:
        pm.unregister(plugin)
        raise PluginError(f"plugin {name!r} is refused: it wraps {', '.join(wrappers)}; "
                          "blip2plugins calls each implementation on its own, so hook wrappers are not supported")
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
    entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        name = entry_point.name
        version = entry_point.dist.version if entry_point.dist else None
        if name in blocked:
            _skipped[name] = (version, f"blocked by {ENV_BLOCK}")
            continue
        if allowed is not None and name not in allowed:
            _skipped[name] = (version, f"not named in {ENV_ALLOW}")
            continue
        if pm.has_plugin(name) or name in _broken:
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:  # a broken third-party plugin: record it, load the others
            _broken[name] = (version, f"plugin {name!r} ({entry_point.value}) failed to import: {exc!r}")
            continue
        try:
            _register(pm, plugin, name)
        except PluginError as exc:
            _broken[name] = (version, str(exc))
            continue
        _versions[name] = version
    missing = (allowed or set()) - set(entry_points.names)
    if missing:
        log.warning("%s names %s, which no installed plugin provides", ENV_ALLOW, ", ".join(sorted(missing)))
    return pm


def get_plugin_manager(*, allow_broken: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use.

    Raises :class:`PluginError` naming every external plugin that failed to import or was refused,
    and how to skip them, unless ``allow_broken`` (for diagnostics, which list them instead).
    """
    global _manager
    with _lock:
        if _manager is None:
            for table in (_versions, _collected, _broken, _skipped):
                table.clear()
            _manager = _build()
        if _broken and not allow_broken:
            names = sorted(_broken)
            errors = "; ".join(_broken[name][1] for name in names)
            raise PluginError(f"{errors} (set {ENV_BLOCK}={','.join(names)} to skip "
                              f"{'it' if len(_broken) == 1 else 'them'}; `blip2 plugins` lists every plugin)")
        return _manager


def reset() -> None:
    """Forget the plugin manager so the next use reloads plugins (after changing the environment)."""
    global _manager
    with _lock:
        _manager = None
        _collected.clear()


def register_plugin(plugin: ModuleType | object, name: str) -> None:
    """Register an in-process plugin (a module or an object with hook implementations)."""
    pm = get_plugin_manager(allow_broken=True)
    with _lock:
        _register(pm, plugin, name)
        _versions[name] = None
        _collected.clear()


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered by name."""
    pm = get_plugin_manager(allow_broken=True)
    with _lock:
        pm.unregister(name=name)
        _versions.pop(name, None)
        _collected.clear()


def _implementations(hook_name: str, *, allow_broken: bool = False) -> list[pluggy.HookImpl]:
    """The implementations of a hook in pluggy's call order (last registered first, tryfirst/trylast applied)."""
    pm = get_plugin_manager(allow_broken=allow_broken)
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


def _call(impl: pluggy.HookImpl, hook_name: str, **arguments: Any) -> Any:
    """Call one implementation with the arguments it asks for; what it raises becomes a
    :class:`PluginError` naming the plugin."""
    try:
        return impl.function(**{name: arguments[name] for name in impl.argnames})
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r} "
                          f"(set {ENV_BLOCK}={impl.plugin_name} to skip it)") from exc


def call_hook(hook_name: str, *, allow_broken: bool = False, **arguments: Any) -> list[Any]:
    """Call every implementation of a hook in call order and return what they returned; the first
    that raises stops the call with a :class:`PluginError` naming its plugin. ``allow_broken`` calls
    the plugins that loaded even while others are broken (the CLI builds its commands so)."""
    return [_call(impl, hook_name, **arguments) for impl in _implementations(hook_name, allow_broken=allow_broken)]


def _collect(hook_name: str) -> list[tuple[str, list[Any]]]:
    """What each plugin's ``register_*`` implementation registers, per plugin in call order; the hook
    is called once until the plugins change. Registering the wrong type is a :class:`PluginError`."""
    kind = _REGISTERS[hook_name]
    with _lock:
        impls = _implementations(hook_name)  # rebuilds the plugin manager (and _collected) after reset()
        if hook_name not in _collected:
            groups: list[tuple[str, list[Any]]] = []
            for impl in impls:
                items: list[Any] = []

                def register(item: Any, plugin: str = impl.plugin_name, items: list[Any] = items) -> None:
                    if not isinstance(item, kind):
                        raise PluginError(f"plugin {plugin!r} registered {item!r} in {hook_name}; "
                                          f"expected a {kind.__name__}")
                    items.append(item)

                _call(impl, hook_name, register=register)
                groups.append((impl.plugin_name, items))
            _collected[hook_name] = groups
        return list(_collected[hook_name])


def _by_name(hook_name: str) -> Iterator[Any]:
    """Registered items from the last-called plugin (the built-ins) to the first, each plugin's in
    its own order: later items override earlier ones of the same name."""
    for _, items in reversed(_collect(hook_name)):
        yield from items


def model_presets() -> dict[str, ModelPreset]:
    """Every model preset by name and alias; a later registration of a name replaces an earlier one."""
    presets: dict[str, ModelPreset] = {}
    for preset in _by_name("register_models"):
        for key in (preset.name, *preset.aliases):
            presets[key] = preset
    return presets


def image_sources() -> list[ImageSource]:
    """Every registered image source, plugins before built-ins, each plugin's in its own order."""
    return [source for _, sources in _collect("register_image_sources") for source in sources]


def serve_commands() -> dict[str, ServeCommand]:
    """Every serve command by name; a later registration of a name replaces an earlier one."""
    return {command.name: command for command in _by_name("register_serve_commands")}


def process_result(task: str, result: Result) -> Result:
    """Pass a successful result through every ``process_result`` implementation, chained.

    A plugin that raises, or returns something other than a :class:`Result` or ``None``, raises
    :class:`PluginError` naming it.
    """
    if not result.ok:
        return result
    for impl in _implementations("process_result"):
        new = _call(impl, "process_result", task=task, result=result)
        if new is not None:
            if not isinstance(new, Result):
                raise PluginError(f"plugin {impl.plugin_name!r} returned {type(new).__name__} from "
                                  "process_result; expected a Result or None")
            result = new
    return result


def notify(event: str, adapter: AdapterVersion) -> None:
    """Fire an adapter event hook (``training_finished`` or ``adapter_promoted``) on every plugin.

    The event has already happened: a plugin that raises is logged, and the others are still called.
    """
    if event not in ("training_finished", "adapter_promoted"):
        raise ValueError(f"unknown adapter event {event!r}")
    for impl in _implementations(event):
        try:
            _call(impl, event, adapter=adapter)
        except PluginError as exc:
            log.error("%s", exc, exc_info=exc.__cause__)


def plugin_info() -> list[PluginInfo]:
    """Every plugin, sorted by name: the loaded ones with their hooks, then as ``"broken"`` or
    ``"not loaded"`` the installed external plugins that are not in use, with the reason. Never
    raises for a broken plugin."""
    pm = get_plugin_manager(allow_broken=True)
    with _lock:
        infos = []
        for name, plugin in pm.list_name_plugin():
            hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
            infos.append(PluginInfo(name, _versions.get(name), hooks, builtin=name in DEFAULT_PLUGINS))
        for status, table in (("broken", _broken), ("not loaded", _skipped)):
            infos += [PluginInfo(name, version, (), builtin=False, status=status, reason=reason)
                      for name, (version, reason) in table.items()]
    return sorted(infos, key=lambda info: info.name)
