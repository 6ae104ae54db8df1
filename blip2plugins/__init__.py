"""blip2plugins: a plugin host for Salesforce BLIP-2.

The public face: :class:`Host` (loaded lazily, since it imports torch), ``hookimpl`` for plugin
authors, and the result and registration types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Blip2Error, ImageError, ModelLoadError, OptionError, PluginError
from .hookspecs import hookimpl
from .types import AdapterVersion, ImageLimits, ImageSource, ModelPreset, Result, ServingAdapter

if TYPE_CHECKING:
    from .chat import Conversation
    from .host import Host

__all__ = [
    "AdapterVersion", "Blip2Error", "Conversation", "Host", "ImageError", "ImageLimits", "ImageSource",
    "ModelLoadError", "ModelPreset", "OptionError", "PluginError", "Result", "ServingAdapter", "hookimpl",
]


def __getattr__(name: str) -> Any:
    if name == "Host":
        from .host import Host

        return Host
    if name == "Conversation":
        from .chat import Conversation

        return Conversation
    raise AttributeError(f"module 'blip2plugins' has no attribute {name!r}")
