"""Tools that read the latest image attached earlier in an agent's conversation (needs ``langchain``).

The agent (``langchain.agents.create_agent``) injects its state through the hidden ``runtime``
argument, so the LLM calls ``caption_latest_image()``, ``ask_latest_image(question)`` or
``match_latest_image(texts)`` without having to copy the image into the call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain.tools import ToolRuntime
from langchain_core.tools import BaseTool, StructuredTool, ToolException

from blip2plugins.errors import Blip2Error

from ._host import ImageRef
from .tools import AskImageTool, CaptionImageTool, MatchImageTextTool, question_prompt

if TYPE_CHECKING:
    from .toolkit import Blip2Toolkit


def latest_image(runtime: ToolRuntime) -> ImageRef:
    """The last image block in the conversation so far (any message), or a tool error saying there is none."""
    state = runtime.state
    messages = state.get("messages", []) if isinstance(state, dict) else getattr(state, "messages", [])
    for m in range(len(messages), 0, -1):
        blocks = messages[m - 1].content_blocks
        for b in range(len(blocks), 0, -1):
            if blocks[b - 1].get("type") == "image":
                try:
                    return ImageRef.from_block(dict(blocks[b - 1]), f"message {m}, content block {b}")
                except Blip2Error as exc:
                    raise ToolException(str(exc)) from None
    raise ToolException("there is no image in the conversation yet: the user has to attach one")


def caption_tool(kit: Blip2Toolkit) -> BaseTool:
    base = CaptionImageTool(**kit.host_settings())

    def caption_latest_image(runtime: ToolRuntime) -> tuple[str, dict[str, Any]]:
        """Describe, in one short sentence, the latest image the user attached to the conversation (BLIP-2)."""
        return base.answer(latest_image(runtime), "caption", "")

    return StructuredTool.from_function(caption_latest_image, response_format="content_and_artifact",
                                        handle_tool_error=True)


def ask_tool(kit: Blip2Toolkit) -> BaseTool:
    base = AskImageTool(**kit.host_settings())

    def ask_latest_image(question: str, runtime: ToolRuntime) -> tuple[str, dict[str, Any]]:
        """Answer a short question (colours, counts, objects, yes/no) about the latest image the user attached (BLIP-2)."""
        image = latest_image(runtime)
        try:
            prompt = question_prompt(base.get_host(), question)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return base.answer(image, "ask", prompt)

    return StructuredTool.from_function(ask_latest_image, response_format="content_and_artifact",
                                        handle_tool_error=True)


def match_tool(kit: Blip2Toolkit) -> BaseTool:
    base = MatchImageTextTool(**kit.host_settings())

    def match_latest_image(texts: list[str], runtime: ToolRuntime) -> tuple[str, dict[str, Any]]:
        """Score how well each of a few short texts describes the latest image the user attached (BLIP-2 ITM probability)."""
        return base.match(latest_image(runtime), texts)

    return StructuredTool.from_function(match_latest_image, response_format="content_and_artifact",
                                        handle_tool_error=True)
