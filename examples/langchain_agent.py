"""An agent that looks at images through BLIP-2 tools, on the bundled demo model (offline, seconds).

    pip install -e 'adapters/langchain[agents]' && python examples/langchain_agent.py

BLIP-2 cannot call tools itself: it is the agent's eyes. Any tool-calling chat model drives the
agent; here a scripted stand-in plays that part so the walkthrough runs offline. Swap it for a real
one (``ChatOpenAI``, ``ChatOllama``...) and drop the script.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any, Sequence

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from blip2plugins_langchain import Blip2Toolkit

IMAGES = Path(__file__).resolve().parent / "images"


class ScriptedLLM(GenericFakeChatModel):
    """Stands in for a real tool-calling LLM: replies with the messages it was given, in order."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedLLM:
        return self


def tool_call(name: str, call_id: str, **args: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def show(state: dict[str, Any]) -> None:
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            score = (message.artifact or {}).get("score")
            extra = f" (score {score:.3f})" if score is not None else ""
            print(f"  tool {message.name}: {message.content}{extra}")
        elif isinstance(message, AIMessage) and message.text:
            print(f"  agent: {message.text}")


def main() -> None:
    # 1. Tools that take the image as an argument (a path, an http(s) URL or a data: URI).
    paths = [str(IMAGES / "green-triangle_on-gray.png"), str(IMAGES / "red-circle_blue-square_on-white.png")]
    llm = ScriptedLLM(messages=iter([
        AIMessage("", tool_calls=[tool_call("caption_image", "1", image=paths[0]),
                                  tool_call("ask_image", "2", image=paths[1], question="what color is the square?"),
                                  tool_call("caption_image", "3", image="no-such-file.png")]),
        AIMessage("The first picture shows a green triangle; the square in the second is blue."),
    ]))
    agent = create_agent(llm, tools=Blip2Toolkit(model="demo").get_tools())
    print("agent with image-path tools:")
    show(agent.invoke({"messages": [HumanMessage(f"What is in {paths[0]}? What color is the square in {paths[1]}?")]}))

    # 2. Tools that read the latest image the user attached to the conversation.
    image = IMAGES / "yellow-circle_green-square_red-triangle_on-dark.png"
    block = {"type": "image", "base64": base64.b64encode(image.read_bytes()).decode(), "mime_type": "image/png"}
    llm = ScriptedLLM(messages=iter([
        AIMessage("", tool_calls=[tool_call("caption_latest_image", "1"),
                                  tool_call("ask_latest_image", "2", question="how many shapes?")]),
        AIMessage("Three shapes: a yellow circle, a green square and a red triangle."),
    ]))
    agent = create_agent(llm, tools=Blip2Toolkit(model="demo", image_from="conversation").get_tools())
    print("agent with conversation-image tools:")
    show(agent.invoke({"messages": [HumanMessage(content=[{"type": "text", "text": "What is this?"}, block])]}))

    # 3. Finding images: search an image index (built here from examples/images), then check a hit.
    from blip2plugins import Host
    from blip2plugins.index import build_index

    index_file = Path(tempfile.mkdtemp()) / "images.idx"
    with Host.load("demo") as host:
        index, _ = build_index(host, [str(IMAGES)], progress=False)
    index.save(index_file)  # the same as `blip2 index build examples/images --out images.idx`
    found = str(IMAGES / "green-triangle_on-gray.png")
    llm = ScriptedLLM(messages=iter([
        AIMessage("", tool_calls=[tool_call("search_images", "1", query="a green triangle", k=2)]),
        AIMessage("", tool_calls=[tool_call("match_image_text", "2", image=found,
                                            texts=["a green triangle", "a green circle"])]),
        AIMessage(f"{found} shows a green triangle."),
    ]))
    agent = create_agent(llm, tools=Blip2Toolkit(model="demo", index=index_file).get_tools())
    print("agent with search and matching tools:")
    show(agent.invoke({"messages": [HumanMessage("Find me a picture of a green triangle.")]}))


if __name__ == "__main__":
    main()
