"""The entry-point plugin: registers the ``label-studio`` serving adapter (``blip2 serve label-studio``)."""

from __future__ import annotations

from typing import Callable

from blip2plugins import ServingAdapter, hookimpl


@hookimpl
def register_adapters(register: Callable[[ServingAdapter], None]) -> None:
    from .cli import serve

    register(ServingAdapter("label-studio", serve, "Label Studio ML backend: pre-annotated captions, "
                                                   "LoRA retrained from accepted labels"))
