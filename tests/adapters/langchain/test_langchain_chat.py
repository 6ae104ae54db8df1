"""ChatBlip2 on the bundled demo model: right answers, history, encode-once, streaming, async, batch, errors."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import operator
from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.messages.content import create_image_block
from langchain_images import IMAGES, STEMS, caption_of, image_block

from blip2plugins import Result, hookimpl
from blip2plugins.errors import ImageError, ModelLoadError, OptionError
from blip2plugins.host import Host
from blip2plugins.testing import registered
from blip2plugins_langchain import ChatBlip2
from blip2plugins_langchain import _host as shared

@pytest.fixture(scope="module")
def chat() -> ChatBlip2:
    return ChatBlip2(model="demo")


def ask(text: str, stem: str) -> HumanMessage:
    return HumanMessage(content=[{"type": "text", "text": text}, image_block(stem)])


@pytest.mark.parametrize("stem", STEMS)
def test_an_image_without_text_is_captioned(chat, stem):
    reply = chat.invoke([HumanMessage(content=[image_block(stem)])])
    assert reply.content == caption_of(stem)
    assert reply.response_metadata["prompt"] == "" and reply.response_metadata["finish_reason"] == "stop"


def test_every_image_block_shape_is_read(chat):
    stem = "red-circle_blue-square_on-white"
    data = image_block(stem)["base64"]
    shapes = [
        image_block(stem),
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "image", "source_type": "base64", "data": data, "mime_type": "image/png"},
        {"type": "image", "url": (IMAGES / f"{stem}.png").as_uri()},
        create_image_block(base64=data, mime_type="image/png"),
    ]
    for block in shapes:
        reply = chat.invoke([HumanMessage(content=[{"type": "text", "text": "what color is the square?"}, block])])
        assert reply.content == "blue", block.get("type")


@pytest.mark.parametrize("stem, count", [("green-triangle_on-gray", "one"),
                                         ("blue-square_yellow-triangle_on-white", "two"),
                                         ("yellow-circle_green-square_red-triangle_on-dark", "three")])
def test_a_follow_up_uses_the_image_of_an_earlier_turn_encoded_once(stem, count):
    chat = ChatBlip2(model="demo", host=Host.load("demo"))  # a host of its own: exact encode counts
    host = chat.get_host()
    colour = dict(reversed(s.split("-")) for s in stem.split("_on-")[0].split("_"))["triangle"]
    messages = [ask("what color is the triangle?", stem)]
    first = chat.invoke(messages)
    assert first.content == colour
    messages += [first, HumanMessage("how many shapes?")]
    second = chat.invoke(messages)
    assert second.content == count, "the follow-up is right only with the first turn's image"
    assert second.response_metadata["prompt"] == (
        f"Question: what color is the triangle? Answer: {colour}. Question: how many shapes? Answer:")
    assert host.stats()["encoded"] == 1, "the image must be encoded once for both turns"
    assert second.response_metadata["image"] == first.response_metadata["image"]
    host.close()


def test_the_latest_image_is_seen_unless_the_first_is_asked_for(chat):
    messages = [HumanMessage(content=[image_block("red-circle_blue-square_on-white")]),
                ask("what color is the circle?", "green-circle_blue-triangle_on-gray")]
    assert chat.invoke(messages).content == "green"
    assert ChatBlip2(model="demo", image_choice="first").invoke(messages).content == "red"


def test_system_messages_are_the_preamble(chat):
    reply = chat.invoke([SystemMessage("Be brief."), ask("how many shapes?", "green-triangle_on-gray")])
    assert reply.response_metadata["prompt"] == "Be brief. Question: how many shapes? Answer:"


def test_an_ai_message_with_only_tool_calls_is_no_turn(chat):
    calls = AIMessage(content="", tool_calls=[{"name": "lookup", "args": {}, "id": "call-1"}])
    reply = chat.invoke([ask("how many shapes?", "green-triangle_on-gray"), calls, HumanMessage("is there a circle?")])
    assert reply.response_metadata["prompt"] == "Question: how many shapes? is there a circle? Answer:"


def test_binding_tools_or_a_schema_says_why_not(chat):
    with pytest.raises(NotImplementedError, match=r"ChatBlip2 cannot call tools.*Blip2Toolkit"):
        chat.bind_tools([])
    with pytest.raises(NotImplementedError, match="ChatBlip2 cannot give structured output"):
        chat.with_structured_output({"title": "x", "type": "object", "properties": {}})


def test_without_an_image_the_language_model_answers_alone(chat):
    host = chat.get_host()
    encoded = host.stats()["encoded"]
    reply = chat.invoke("what color is the circle?")
    assert host.stats()["encoded"] == encoded
    assert reply.response_metadata["image"] is None
    alone = host.submit_features("chat", None, reply.response_metadata["prompt"],
                                 host.options(min_new_tokens=1)).result()
    assert reply.content == alone.text
    assert reply.usage_metadata["input_tokens"] == len(chat.get_token_ids(reply.response_metadata["prompt"])) + 1


def test_streamed_chunks_join_to_the_invoke_answer(chat):
    stem = "yellow-circle_green-square_red-triangle_on-dark"
    messages = [HumanMessage(content=[image_block(stem)])]
    answer = chat.invoke(messages)
    chunks = list(chat.stream(messages))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 3 and "".join(texts) == answer.content == caption_of(stem)
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata == answer.usage_metadata
    assert last.response_metadata["finish_reason"] == "stop"


async def test_async_calls_give_the_same_answers_without_blocking_the_loop(chat):
    messages = [ask("what color is the triangle?", "green-circle_blue-triangle_on-gray")]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    reply = await chat.ainvoke(messages)
    chunks = [c.content async for c in chat.astream(messages)]
    task.cancel()
    assert reply.content == "blue" == "".join(chunks)
    assert ticks > 5, "the event loop should keep running while the model works"


def test_batch_runs_through_the_host_as_one_batch(chat):
    host = chat.get_host()
    stem = "blue-square_yellow-triangle_on-white"
    questions = ["what color is the square?", "what color is the triangle?", "is there a circle?"]
    chat.invoke([ask(questions[0], stem)])  # the image is encoded and cached
    before = host.stats()
    replies = chat.batch([[ask(q, stem)] for q in questions])
    after = host.stats()
    assert [r.content for r in replies] == ["blue", "yellow", "no"]
    assert after["batches"] - before["batches"] == 1 and after["encoded"] == before["encoded"]


async def test_abatch_runs_through_the_host_as_one_batch(chat):
    host = chat.get_host()
    stem = "green-triangle_on-gray"
    chat.invoke([ask("how many shapes?", stem)])
    before = host.stats()
    replies = await chat.abatch([[ask(q, stem)] for q in ["how many shapes?", "is there a triangle?"]])
    assert [r.content for r in replies] == ["one", "yes"]
    assert host.stats()["batches"] - before["batches"] == 1


def test_stop_sequences_and_finish_reasons(chat):
    messages = [HumanMessage(content=[image_block("yellow-circle_green-square_red-triangle_on-dark")])]
    stopped = chat.invoke(messages, stop=[" and"])
    assert stopped.content == "a yellow circle" and stopped.response_metadata["finish_reason"] == "stop"
    assert ChatBlip2(model="demo", stop=[" and"]).invoke(messages).content == "a yellow circle"
    short = chat.invoke(messages, max_tokens=3)
    assert short.content == "a yellow circle" and short.response_metadata["finish_reason"] == "length"
    assert short.usage_metadata["output_tokens"] == 3


def test_usage_and_token_counts_come_from_the_model_tokenizer(chat):
    host = chat.get_host()
    tokenizer = host.loaded.processor.tokenizer
    messages = [ask("how many shapes?", "green-triangle_on-gray")]
    reply = chat.invoke(messages)
    prompt = reply.response_metadata["prompt"]
    expected = len(tokenizer(prompt).input_ids) + host.loaded.num_query_tokens
    assert reply.usage_metadata["input_tokens"] == expected == chat.get_num_tokens_from_messages(messages)
    assert chat.get_token_ids("how many shapes?") == tokenizer("how many shapes?", add_special_tokens=False).input_ids
    assert reply.response_metadata["model_version"] == host.model_version


def test_long_histories_are_trimmed_from_the_oldest_turn(chat):
    messages = []
    for i in range(20):
        messages += [HumanMessage(f"is there a circle number {i}?"), AIMessage("yes")]
    messages.append(ask("how many shapes?", "blue-square_yellow-triangle_on-white"))
    reply = chat.invoke(messages, max_tokens=5)
    prompt = reply.response_metadata["prompt"]
    assert "number 19?" in prompt and "number 0?" not in prompt
    assert reply.usage_metadata["input_tokens"] + 5 <= chat.get_host().loaded.max_positions
    dropped = reply.response_metadata["turns_dropped"]
    assert 0 < dropped < 20 and f"number {dropped}?" in prompt and f"number {dropped - 1}?" not in prompt


def test_dropped_turns_are_counted_and_warned_about_once_per_instance(caplog):
    chat = ChatBlip2(model="demo")
    question = ask("how many shapes?", "blue-square_yellow-triangle_on-white")
    history = [HumanMessage("is there a circle?"), AIMessage("yes"), HumanMessage("is it red?"), AIMessage("no")] * 8
    with caplog.at_level("WARNING", logger="blip2plugins_langchain.chat_models"):
        assert chat.invoke([question]).response_metadata["turns_dropped"] == 0
        assert not caplog.records
        first = chat.invoke(history + [question]).response_metadata
        with_system = chat.invoke([SystemMessage("Answer briefly.")] + history + [question]).response_metadata
        assert 0 < first["turns_dropped"] <= with_system["turns_dropped"] < 16
        assert with_system["prompt"].startswith("Answer briefly. Question: ")
        assert with_system["prompt"].endswith("Question: how many shapes? Answer:")
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage().startswith(f"ChatBlip2 left the {first['turns_dropped']} oldest turn(s) ")
        ChatBlip2(model="demo").invoke(history + [question])
        assert len(caplog.records) == 2  # once per instance


def _shout(task: str, result: Result) -> Result:
    return dataclasses.replace(result, text=f"<{result.text.upper()}>")


async def test_a_process_result_plugin_changes_replies_not_history_and_streams_join_to_invoke(chat):
    messages = [ask("what color is the triangle?", "green-circle_blue-triangle_on-gray")]
    with registered(SimpleNamespace(process_result=hookimpl(_shout)), "shout"):
        reply = chat.invoke(messages)
        streamed = list(chat.stream(messages))
        astreamed = [c.content async for c in chat.astream(messages)]
        follow_up = chat.invoke(messages + [reply, HumanMessage("how many shapes?")])
        merged = functools.reduce(operator.add, streamed)
    assert reply.content == "<BLUE>" and reply.response_metadata["raw_text"] == "blue"
    assert "".join(c.content for c in streamed) == "".join(astreamed) == "<BLUE>"
    assert merged.response_metadata["raw_text"] == "blue"
    assert "Answer: blue. Question: how many shapes?" in follow_up.response_metadata["prompt"]
    edited = AIMessage("green")  # an answer the caller wrote: its content is the turn
    assert "Answer: green." in chat.invoke(messages + [edited, HumanMessage("ok?")]).response_metadata["prompt"]


def test_instances_share_a_host_and_construction_loads_nothing():
    before = dict(shared._hosts)
    lazy = ChatBlip2(model="no-such-model")
    assert shared._hosts == before
    with pytest.raises(ModelLoadError, match="no-such-model"):
        lazy.invoke("hello")
    assert ChatBlip2(model_name="demo").get_host() is ChatBlip2(model="demo").get_host()


def test_bad_images_and_blocks_are_clear_errors(chat):
    garbage = {"type": "image", "base64": base64.b64encode(b"not a png").decode(), "mime_type": "image/png"}
    with pytest.raises(ImageError, match="message 2, content block 2"):
        chat.invoke([AIMessage("hi"), HumanMessage(content=[{"type": "text", "text": "what?"}, garbage])])
    with pytest.raises(ImageError, match="not valid base64"):
        chat.invoke([HumanMessage(content=[{"type": "image", "base64": "%%%", "mime_type": "image/png"}])])
    audio = {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"}
    with pytest.raises(OptionError, match="not 'audio' blocks"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "what?"}, audio])])
    with pytest.raises(OptionError, match="last message must be the user's"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])


def test_the_image_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(shared, "IMAGE_CACHE_SIZE", 2)
    with Host.load("demo") as host:
        chat = ChatBlip2(host=host)
        for stem in STEMS[:3]:
            chat.invoke([ask("how many shapes?", stem)])
        assert host.stats()["encoded"] == 3
        chat.invoke([ask("how many shapes?", STEMS[2])])
        assert host.stats()["encoded"] == 3, "a recent image stays cached"
        chat.invoke([ask("how many shapes?", STEMS[0])])
        assert host.stats()["encoded"] == 4, "the least recently used image was dropped"


def test_tracing_params_and_profile(chat):
    params = chat._get_ls_params(stop=["x"], model="other")
    assert params["ls_provider"] == "blip2" and params["ls_model_name"] == "other" and params["ls_stop"] == ["x"]
    assert chat.profile["image_inputs"] is True and chat.profile["tool_calling"] is False
    assert chat.profile["max_input_tokens"] == chat.get_host().loaded.max_positions


@pytest.mark.parametrize("config", ["[" * 100_000, '{"text_config": {"max_position_embeddings": ' + "9" * 5000 + "}}",
                                    "[1, 2]", '{"text_config": [64]}', '{"text_config": {"max_position_embeddings": "64"}}'])
def test_a_profile_from_a_hostile_config_leaves_the_context_out(tmp_path, config):
    (tmp_path / "config.json").write_text(config)
    profile = ChatBlip2(model=str(tmp_path)).profile  # no weights are loaded for a profile
    assert profile["image_inputs"] is True and "max_input_tokens" not in profile


def test_chat_blip2_serializes_without_its_host():
    from langchain_core.load import dumpd, dumps, load, loads

    host = shared.shared_host("demo", None, "auto", "auto", None)
    chat = ChatBlip2(model="demo", host=host, max_tokens=7, stop=["."], image_choice="first",
                     model_kwargs={"num_beams": 2})
    data = dumpd(chat)
    assert data["id"] == ["blip2plugins_langchain", "chat_models", "ChatBlip2"] and "host" not in data["kwargs"]
    copy = load(data, valid_namespaces=["blip2plugins_langchain"], allowed_objects=[ChatBlip2])
    again = loads(dumps(chat), valid_namespaces=["blip2plugins_langchain"], allowed_objects=[ChatBlip2])
    assert isinstance(copy, ChatBlip2) and copy.host is None and copy.model_dump() == again.model_dump()
    assert copy.model_dump() == chat.model_dump()  # every field but the excluded host
    assert copy.get_host() is host  # the shared host for its settings
