"""The BLIP-2 tools: right captions and answers on demo images, errors an agent can read, an agent that uses them."""

from __future__ import annotations

import base64
from typing import Any, Sequence

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_images import STEMS, caption_of, image_block, image_path

from blip2plugins_langchain import AskImageTool, Blip2Toolkit, CaptionImageTool


def call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


@pytest.mark.parametrize("stem", STEMS)
def test_caption_tool_gives_the_right_caption_and_an_artifact(stem):
    message = CaptionImageTool(model="demo").invoke(call("caption_image", {"image": image_path(stem)}, "1"))
    assert isinstance(message, ToolMessage) and message.content == caption_of(stem)
    assert 0 < message.artifact["score"] <= 1 and message.artifact["model_version"].startswith("demo@")
    assert "generate_s" in message.artifact["timings"]


def test_ask_tool_answers_and_takes_data_uris():
    tool = AskImageTool(model="demo")
    path = image_path("red-circle_blue-square_on-white")
    data = "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
    assert tool.invoke({"image": path, "question": "what color is the circle?"}) == "red"
    assert tool.invoke({"image": data, "question": "what color is the square?"}) == "blue"


def test_tool_errors_come_back_as_tool_messages():
    caption = CaptionImageTool(model="demo").invoke(call("caption_image", {"image": "/no/such/image.png"}, "7"))
    assert caption.status == "error" and "/no/such/image.png" in caption.content
    empty = AskImageTool(model="demo").invoke(
        call("ask_image", {"image": image_path(STEMS[0]), "question": " "}, "8"))
    assert empty.status == "error" and "question is empty" in empty.content


def test_the_toolkit_builds_tools_by_name():
    assert [t.name for t in Blip2Toolkit().get_tools()] == ["caption_image", "ask_image", "match_image_text"]
    conversation = Blip2Toolkit(image_from="conversation").get_tools()
    assert [t.name for t in conversation] == ["caption_latest_image", "ask_latest_image", "match_latest_image"]
    assert "runtime" not in conversation[1].tool_call_schema.model_json_schema()["properties"]
    with pytest.raises(Exception, match="unknown tool"):
        Blip2Toolkit(tools=("no_such_tool",)).get_tools()
    with pytest.raises(Exception, match="needs an image index"):
        Blip2Toolkit(tools=("search_images",)).get_tools()


class ScriptedModel(GenericFakeChatModel):
    """A tool-calling chat model that replies with the messages the test scripted."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        return self


def test_an_agent_calls_the_tools_on_demo_images_and_gets_the_right_captions():
    stems = ["green-triangle_on-gray", "yellow-circle_green-square_red-triangle_on-dark"]
    script = iter([
        AIMessage("", tool_calls=[call("caption_image", {"image": image_path(s)}, f"c{i}") for i, s in enumerate(stems)]),
        AIMessage("", tool_calls=[call("ask_image", {"image": image_path(stems[1]), "question": "what color is the square?"}, "q"),
                                  call("caption_image", {"image": "missing.png"}, "bad")]),
        AIMessage("Both pictures are described."),
    ])
    agent = create_agent(ScriptedModel(messages=script), tools=Blip2Toolkit(model="demo").get_tools())
    state = agent.invoke({"messages": [HumanMessage("describe these pictures")]})
    results = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
    assert results["c0"].content == caption_of(stems[0]) and results["c1"].content == caption_of(stems[1])
    assert results["q"].content == "green"
    assert results["bad"].status == "error" and "missing.png" in results["bad"].content
    assert state["messages"][-1].content == "Both pictures are described."


def test_an_agent_asks_about_the_image_attached_to_the_conversation():
    script = iter([
        AIMessage("", tool_calls=[call("caption_latest_image", {}, "c"),
                                  call("ask_latest_image", {"question": "how many shapes?"}, "q")]),
        AIMessage("done"),
    ])
    tools = Blip2Toolkit(model="demo", image_from="conversation").get_tools()
    agent = create_agent(ScriptedModel(messages=script), tools=tools)
    stem = "blue-square_yellow-triangle_on-white"
    user = HumanMessage(content=[{"type": "text", "text": "what is this?"}, image_block(stem)])
    state = agent.invoke({"messages": [user]})
    results = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
    assert results["c"].content == caption_of(stem) and results["q"].content == "two"
    assert results["q"].artifact["model_version"].startswith("demo@")

    no_image = create_agent(ScriptedModel(messages=iter([AIMessage("", tool_calls=[call("caption_latest_image", {}, "n")]),
                                                         AIMessage("ok")])), tools=tools)
    state = no_image.invoke({"messages": [HumanMessage("describe it")]})
    error = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    assert error.status == "error" and "no image in the conversation" in error.content
