"""BLIP-2 as tools for agents: a tool-calling LLM asks BLIP-2 about images.

``caption_image(image)`` and ``ask_image(image, question)`` take the image as a string: a local path,
an ``http(s)`` URL or a ``data:`` URI (an LLM cannot reliably copy base64 into arguments). Each returns
``(text, artifact)`` (``response_format="content_and_artifact"``): the LLM reads the text, the
``ToolMessage.artifact`` keeps the score, model version and timings. The ``*_latest_image`` variants
(:mod:`.agent_tools`) take no image argument: they read the latest image attached earlier in the
agent's conversation. A bad image or question comes back as a tool error the agent can read.

:class:`Blip2Toolkit` builds the set; ``match_image_text`` and ``search_images`` join it once the
host has retrieval (they are registered in ``TOOLS`` like the others).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import BaseModel, ConfigDict, Field

from blip2plugins.errors import Blip2Error
from blip2plugins.host import Host
from blip2plugins.types import Result

from ._host import HostSettings, ImageRef, encode_image

IMAGE_HELP = "The image: a local file path, an http(s) URL or a data: URI."


class ImageInput(BaseModel):
    image: str = Field(description=IMAGE_HELP)


class ImageQuestionInput(BaseModel):
    image: str = Field(description=IMAGE_HELP)
    question: str = Field(description="A short question about the image, e.g. 'how many people are there?'")


class Blip2Tool(HostSettings, BaseTool):
    """Base of the BLIP-2 tools: a shared host, content-and-artifact output, errors as tool errors."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")

    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], str] | None = True
    handle_validation_error: Any = True

    def answer(self, image: ImageRef, task: str, prompt: str) -> tuple[str, dict[str, Any]]:
        """Run one request on ``image`` (encoded once per host) and shape it for the agent."""
        try:
            host = self.get_host()
            result = host.submit_features(task, encode_image(host, image), prompt, host.options()).result()
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        if not result.ok:
            raise ToolException(result.error)
        return result.text or "", artifact(result)


def artifact(result: Result) -> dict[str, Any]:
    """What the tool keeps for programs (not shown to the LLM): score, model version, timings."""
    return {"score": result.score, "model": result.model, "model_version": result.model_version,
            "finish_reason": result.finish_reason, "timings": dict(result.timings)}


def question_prompt(host: Host, question: str) -> str:
    if not question.strip():
        raise ToolException("the question is empty: ask something about the image")
    return host.loaded.family.render_question(question)


class CaptionImageTool(Blip2Tool):
    """Caption an image with BLIP-2."""

    name: str = "caption_image"
    description: str = ("Describe an image in one short sentence (BLIP-2 captioning). "
                        "Input: the image as a local path, an http(s) URL or a data: URI.")
    args_schema: type[BaseModel] = ImageInput

    def _run(self, image: str, run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        try:
            ref = ImageRef.from_string(image)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return self.answer(ref, "caption", "")


class AskImageTool(Blip2Tool):
    """Answer a question about an image with BLIP-2."""

    name: str = "ask_image"
    description: str = ("Answer a short question about an image (BLIP-2 visual question answering): colours, "
                        "counts, objects, yes/no. Inputs: the image (local path, http(s) URL or data: URI) and "
                        "the question.")
    args_schema: type[BaseModel] = ImageQuestionInput

    def _run(self, image: str, question: str,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        try:
            ref = ImageRef.from_string(image)
            prompt = question_prompt(self.get_host(), question)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return self.answer(ref, "ask", prompt)


#: Tool name -> builder from the toolkit's settings; retrieval tools are added here when the host has them.
TOOLS: dict[str, Callable[[Blip2Toolkit], BaseTool]] = {
    "caption_image": lambda kit: CaptionImageTool(**kit.host_settings()),
    "ask_image": lambda kit: AskImageTool(**kit.host_settings()),
}
#: The same tools reading the latest image of the agent's conversation (built by :mod:`.agent_tools`).
CONVERSATION_TOOLS: dict[str, Callable[[Blip2Toolkit], BaseTool]] = {}


class Blip2Toolkit(HostSettings, BaseToolkit):
    """The BLIP-2 tools on one shared model.

    ``image_from="argument"`` gives tools that take the image as an argument; ``"conversation"``
    gives tools that read the latest image attached earlier in the agent's conversation (they need
    ``langchain``'s agents, which inject the conversation). ``tools`` picks a subset by name.
    """

    image_from: Literal["argument", "conversation"] = "argument"
    tools: tuple[str, ...] | None = None

    def host_settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "adapter": self.adapter, "device": self.device, "dtype": self.dtype,
                "quantize": self.quantize, "host": self.host}

    def get_tools(self) -> list[BaseTool]:
        """The tools, built now (the model itself loads on first use)."""
        if self.image_from == "conversation":
            from . import agent_tools  # noqa: F401  (registers CONVERSATION_TOOLS; needs langchain)

            builders = CONVERSATION_TOOLS
        else:
            builders = TOOLS
        names = list(self.tools or builders)
        unknown = [name for name in names if name not in builders]
        if unknown:
            raise Blip2Error(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(builders)}")
        return [builders[name](self) for name in names]
