"""blip2plugins: a plugin host for Salesforce BLIP-2.

The public face: :class:`Host` (loaded lazily, since it imports torch), :func:`load_image` (loaded
lazily, since it imports Pillow), ``hookimpl`` for plugin authors, and the result and registration types.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import Blip2Error, ImageError, ModelLoadError, OptionError, PluginError
from .hookspecs import hookimpl
from .types import AdapterVersion, ImageLimits, ImageSource, ModelPreset, Result, ServeCommand

if TYPE_CHECKING:
    from .chat import Conversation
    from .host import Host
    from .images import load_image

__all__ = [
    "AdapterVersion", "Blip2Error", "Conversation", "Host", "ImageError", "ImageLimits", "ImageSource",
    "ModelLoadError", "ModelPreset", "OptionError", "PluginError", "Result", "ServeCommand", "hookimpl",
    "load_image",
]


#: Names loaded on first use, by the module that defines them (each imports torch or Pillow).
_LAZY = {"Conversation": ".chat", "Host": ".host", "load_image": ".images"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'blip2plugins' has no attribute {name!r}")
