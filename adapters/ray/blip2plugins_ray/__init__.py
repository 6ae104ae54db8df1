"""BLIP-2 on a Ray cluster: caption, answer and embed whole image collections with Ray Data.

- :class:`Blip2Predictor`: the ``map_batches`` callable class (one host per actor);
- :func:`annotate`: a ``ray.data.Dataset`` with an ``image`` column -> the same with result columns;
- :func:`run`: a whole job from SOURCE arguments to Parquet shards, resumable (``blip2 ray ...``).

The names load on first use, so the plugin's image source costs ``blip2`` commands no pyarrow import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["TASKS", "Blip2Predictor", "Summary", "annotate", "run"]
_HOMES = {"TASKS": "predictor", "Blip2Predictor": "predictor", "Summary": "jobs", "annotate": "jobs", "run": "jobs"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
