"""Every hook of blip2plugins: its arguments, what it returns and how it is called.

Plugins implement hooks with ``@blip2plugins.hookimpl``. Each ``register_*`` hook receives a
``register`` callback and calls it once per thing it adds; its return value is ignored. These hooks
are called the first time their registry is needed, and again only after plugins are registered,
unregistered or reloaded (``blip2plugins.plugins``). Implementations run in pluggy's order: the plugin
registered last runs first (``tryfirst`` / ``trylast`` adjust it), so external plugins run before the
built-in default plugins. Each implementation is called on its own (hook wrappers are refused), so a
failure is a ``PluginError`` naming its plugin; docs/plugins.md says what each hook does with it.
An implementation whose name matches no spec below is refused with a ``PluginError``.
The section for each hook in ``docs/plugins.md`` is the user-facing documentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from .types import AdapterVersion, ImageSource, ModelPreset, Result, ServeCommand

PROJECT = "blip2plugins"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register: Callable[[ModelPreset], None]) -> None:
    """Add model presets: call ``register(ModelPreset(...))`` for each.

    A later registration with the same name (or alias) replaces an earlier one; the built-in presets
    are registered first, so a plugin can override them.
    """


@hookspec
def register_image_sources(register: Callable[[ImageSource], None]) -> None:
    """Add image sources: call ``register(ImageSource(...))`` for each.

    When a string names an image, the sources are asked in hook call order (external plugins
    before the built-in ones), and the first whose ``claims(ref)`` is true loads it. Strings that no source
    claims are local paths.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``blip2`` command: decorate functions with ``@cli.command()``."""


@hookspec
def register_serve_commands(register: Callable[[ServeCommand], None]) -> None:
    """Add serve commands: call ``register(ServeCommand(name, command))``.

    ``blip2 serve NAME`` runs its click command; ``blip2 serve --help`` lists them.
    """


@hookspec
def process_result(task: str, result: Result) -> Result | None:
    """Post-process one successful result before it reaches the caller.

    ``task`` is ``"caption"``, ``"ask"`` or ``"chat"``. Return a new :class:`Result` (e.g. with
    ``dataclasses.replace(result, text=...)``) or ``None`` to leave it unchanged. Unlike a plain
    pluggy hook the implementations are chained: each receives the result the previous one
    returned, in pluggy's call order (last registered first; ``tryfirst`` / ``trylast`` apply).
    If one raises or returns another type, that result fails with an error naming the plugin.
    Failed items (``result.error`` set) are not passed on. With ``n`` > 1 each candidate is passed
    on its own. ``result.raw_text`` keeps the model's text (chat history uses it) and
    ``result.image`` names the source image (``None`` when unknown: text-only, or features only).
    """


@hookspec
def training_finished(adapter: AdapterVersion) -> None:
    """Called after a training run has written a new adapter version (before any eval gate).

    Every implementation is called; one that raises is logged and does not stop the others.
    """


@hookspec
def adapter_promoted(adapter: AdapterVersion) -> None:
    """Called when an adapter version becomes the one served (eval gate, promote or rollback).

    Every implementation is called; one that raises is logged and does not undo the promotion.
    """
