"""The BLIP-2 toolkit: which tools to build, from one set of host settings.

It imports the tools (:mod:`.tools`, image as an argument; :mod:`.agent_tools`, image from the
conversation), never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from langchain_core.tools import BaseTool, BaseToolkit

from blip2plugins.errors import Blip2Error

from ._host import HostSettings
from .tools import AskImageTool, CaptionImageTool, MatchImageTextTool, SearchImagesTool


@dataclass(frozen=True)
class ToolSpec:
    """How :class:`Blip2Toolkit` builds a tool: ``build`` from the toolkit's settings, the host ``task``
    it needs (a loaded host that cannot do it leaves the tool out) and whether it ``needs_index``."""

    build: Callable[[Blip2Toolkit], BaseTool]
    task: str
    needs_index: bool = False


#: Tool name -> how to build it, for tools that take the image as an argument.
TOOLS: dict[str, ToolSpec] = {
    "caption_image": ToolSpec(lambda kit: CaptionImageTool(**kit.host_settings()), "caption"),
    "ask_image": ToolSpec(lambda kit: AskImageTool(**kit.host_settings()), "ask"),
    "match_image_text": ToolSpec(lambda kit: MatchImageTextTool(**kit.host_settings()), "match"),
    "search_images": ToolSpec(
        lambda kit: SearchImagesTool(**kit.host_settings(), index=kit.index, rerank=kit.rerank), "embed",
        needs_index=True),
}


def conversation_tools() -> dict[str, ToolSpec]:
    """Tool name -> how to build it, for tools that read the latest image of the agent's conversation
    (they need ``langchain``'s agents, imported only here)."""
    from . import agent_tools

    return {"caption_latest_image": ToolSpec(agent_tools.caption_tool, "caption"),
            "ask_latest_image": ToolSpec(agent_tools.ask_tool, "ask"),
            "match_latest_image": ToolSpec(agent_tools.match_tool, "match")}


class Blip2Toolkit(HostSettings, BaseToolkit):
    """The BLIP-2 tools on one shared model.

    ``image_from="argument"`` gives tools that take the image as an argument; ``"conversation"``
    gives tools that read the latest image attached earlier in the agent's conversation (they need
    ``langchain``'s agents, which inject the conversation). ``tools`` picks a subset by name.

    ``search_images`` is in the default set only when ``index`` names an image index file. Building
    the tools loads no model: with ``host=`` (a loaded host) the default set leaves out the tools that
    host cannot do; with a model name every tool is in it, and one the model cannot do (e.g.
    ``match_image_text`` on a model without a retrieval model) answers with a tool error saying so.
    """

    image_from: Literal["argument", "conversation"] = "argument"
    tools: tuple[str, ...] | None = None
    index: Path | None = None
    """An image index file for ``search_images`` (``blip2 index build IMAGES --out FILE``)."""
    rerank: bool = False
    """``search_images`` re-scores its hits with the ITM head."""

    def host_settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "adapter": self.adapter, "device": self.device, "dtype": self.dtype,
                "quantize": self.quantize, "host": self.host}

    def get_tools(self) -> list[BaseTool]:
        """The tools, built now (the model itself loads on first use)."""
        specs = conversation_tools() if self.image_from == "conversation" else TOOLS
        if not self.tools:
            return [spec.build(self) for spec in specs.values() if self._unavailable(spec) is None]
        unknown = [name for name in self.tools if name not in specs]
        if unknown:
            raise Blip2Error(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(specs)}")
        for name in self.tools:
            reason = self._unavailable(specs[name])
            if reason:
                raise Blip2Error(f"tool {name}: {reason}")
        return [specs[name].build(self) for name in self.tools]

    def _unavailable(self, spec: ToolSpec) -> str | None:
        """Why this toolkit cannot offer the tool, or ``None`` (loads no model)."""
        if spec.needs_index and self.index is None:
            return "needs an image index: give the toolkit index='FILE' (build one with `blip2 index build`)"
        if self.host is not None and spec.task not in self.host.tasks:
            return f"model {self.host.name!r} cannot {spec.task} (it does {', '.join(self.host.tasks)})"
        return None
