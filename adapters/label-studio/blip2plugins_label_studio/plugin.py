"""The entry-point plugin: registers the ``label-studio`` serve command (``blip2 serve label-studio``)."""

from __future__ import annotations

from typing import Callable

from blip2plugins import ServeCommand, hookimpl


@hookimpl
def register_serve_commands(register: Callable[[ServeCommand], None]) -> None:
    from .cli import serve

    register(ServeCommand("label-studio", serve, "Label Studio ML backend: pre-annotated captions, "
                                                   "LoRA retrained from accepted labels"))
