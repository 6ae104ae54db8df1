"""blip2plugins-langchain: BLIP-2 for LangChain, served by a shared blip2plugins host.

* :class:`ChatBlip2`: a chat model whose prompt is the conversation and whose eyes are its latest image.
* :class:`CaptionImageTool`, :class:`AskImageTool`, :class:`MatchImageTextTool`, :class:`SearchImagesTool`
  and :class:`Blip2Toolkit`: BLIP-2 as tools for agents.

Loaded lazily: the ``blip2`` command imports this package's plugin without paying for LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chat_models import ChatBlip2
    from .toolkit import Blip2Toolkit
    from .tools import AskImageTool, CaptionImageTool, MatchImageTextTool, SearchImagesTool

__all__ = ["AskImageTool", "Blip2Toolkit", "CaptionImageTool", "ChatBlip2", "MatchImageTextTool", "SearchImagesTool"]
_WHERE = {"ChatBlip2": "chat_models", "Blip2Toolkit": "toolkit",
          **{name: "tools" for name in __all__ if name not in ("ChatBlip2", "Blip2Toolkit")}}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
