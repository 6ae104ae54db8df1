"""A Label Studio ML backend on a blip2plugins host: captions and answers as pre-annotations, with
scores, and LoRA adapters retrained from the labels a team accepts.

    blip2 serve label-studio --port 9090

The package imports its server parts lazily, so that loading the plugin (which every ``blip2``
command does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "app", "LabelStudioClient": "client", "Settings": "settings", "LabelConfig": "schema",
    "Target": "schema", "parse_label_config": "schema", "LabelStudioError": "errors", "LabelConfigError": "errors",
    "RequestError": "errors", "SettingsError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'blip2plugins_label_studio' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
