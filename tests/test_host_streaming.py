"""Host additions for chat adapters: text-only requests, stop strings, token streaming, the chat renderer."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from blip2plugins.prompts import fit_chat, render_chat
from blip2plugins.errors import OptionError
from blip2plugins.generation import GenerationOptions
from blip2plugins.hookspecs import hookimpl
from blip2plugins.host import Host
from blip2plugins.testing import registered
from blip2plugins.types import Result

DEMO_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "images" / "red-circle_blue-square_on-white.png"
PROMPTS = ["Question: what is it? Answer:", "a red circle and", "the dog runs in"]


def scene(i: int) -> Image.Image:
    image = Image.new("RGB", (40, 30), ["red", "green", "blue"][i % 3])
    ImageDraw.Draw(image).ellipse((5, 5, 20 + i, 25), fill="yellow")
    return image


@pytest.fixture(scope="module")
def hosts(tiny_opt: Path, tiny_t5: Path):
    made = {"opt": Host.load(str(tiny_opt), max_wait=1.0), "t5": Host.load(str(tiny_t5), max_wait=1.0)}
    yield made
    for host in made.values():
        host.close()


@pytest.fixture(scope="module")
def demo():
    with Host.load("demo") as host:
        yield host


@functools.cache
def _reference(folder: Path) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    return Blip2ForConditionalGeneration.from_pretrained(folder).eval(), Blip2Processor.from_pretrained(folder)


def lm_reference(folder: Path, prompt: str, **kwargs: object) -> str:
    """The language model alone on the prompt, through plain transformers."""
    model, processor = _reference(folder)
    tokenizer = processor.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.language_model.generate(**inputs, max_new_tokens=12, **kwargs)
    if model.config.text_config.model_type == "opt":
        out = out[:, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_text_only_requests_match_the_language_model_alone_and_batch(hosts, tiny_opt, tiny_t5, family):
    host, folder = hosts[family], {"opt": tiny_opt, "t5": tiny_t5}[family]
    opts = host.options(max_new_tokens=12)
    before = host.stats()
    with host.preparing():
        futures = [host.submit_features("chat", None, p, opts) for p in PROMPTS]
    results = [f.result() for f in futures]
    after = host.stats()
    assert after["batches"] - before["batches"] == 1, "text-only requests should run as one batch"
    assert after["encoded"] == before["encoded"], "no image may be encoded"
    assert [r.text for r in results] == [lm_reference(folder, p) for p in PROMPTS]


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_streamed_deltas_join_to_the_non_streamed_text(hosts, family):
    host = hosts[family]
    features = host.encode(scene(1))
    for prompt in PROMPTS:
        for feats in (features, None):
            opts = host.options(max_new_tokens=20)
            expected = host.submit_features("chat", feats, prompt, opts).result()
            stream = host.stream("chat", feats, prompt, opts)
            deltas = list(stream)
            assert "".join(deltas) == expected.text
            assert len(deltas) > 1, "a 20-token answer should arrive in several deltas"
            assert stream.result().text == expected.text
            assert stream.result().finish_reason == expected.finish_reason


def test_stop_strings_cut_the_text_and_end_generation(demo):
    features = demo.encode(DEMO_IMAGE)
    full = demo.submit_features("caption", features, "", demo.options()).result()
    assert full.text == "a red circle and a blue square" and full.finish_reason == "stop"
    stopped = demo.submit_features("caption", features, "", demo.options(stop=[" blue", " and"])).result()
    assert stopped.text == "a red circle" and stopped.finish_reason == "stop"
    assert stopped.score != full.score, "generation should have ended at the stop string"
    stream = demo.stream("caption", features, "", demo.options(stop=" and"))
    assert "".join(stream) == "a red circle"
    short = demo.submit_features("caption", features, "", demo.options(max_new_tokens=3)).result()
    assert short.text == "a red circle" and short.finish_reason == "length"


def test_stop_strings_equal_transformers_stop_strings(hosts, tiny_t5):
    host = hosts["t5"]  # the tiny T5 writes varied text; the tiny OPT repeats one token
    prompt = "Question: is there a triangle? Answer:"
    free = host.submit_features("chat", None, prompt, host.options(max_new_tokens=12)).result()
    assert free.finish_reason == "length"
    # three plain characters from the middle of the free text
    stop = next(free.text[i:i + 3] for i in range(2, len(free.text) - 3) if free.text[i:i + 3].isalpha())
    ours = host.submit_features("chat", None, prompt, host.options(max_new_tokens=12, stop=stop)).result()
    tokenizer = host.loaded.processor.tokenizer
    theirs = lm_reference(tiny_t5, prompt, stop_strings=[stop], tokenizer=tokenizer)
    assert stop in theirs and len(theirs) < len(free.text)
    assert ours.text == theirs[: theirs.find(stop)].strip() and ours.finish_reason == "stop"
    stream = host.stream("chat", None, prompt, host.options(max_new_tokens=12, stop=stop))
    assert "".join(stream) == ours.text


@pytest.mark.parametrize("value, message", [("", "stop must be"), ([1], "stop must be"), ([""], "stop must be")])
def test_bad_stop_option_is_a_clear_error(value, message):
    with pytest.raises(OptionError, match=message):
        GenerationOptions.from_kwargs({"stop": value})


def test_stop_option_is_a_hashable_tuple():
    opts = GenerationOptions.from_kwargs({"stop": ["a", "b", "a"]})
    assert opts.stop == ("a", "b") and hash(opts) == hash(GenerationOptions.from_kwargs({"stop": ("a", "b")}))
    assert GenerationOptions.from_kwargs({"stop": "x"}).stop == ("x",)


def test_streaming_refuses_beams(hosts):
    host = hosts["opt"]
    with pytest.raises(OptionError, match="num_beams=1"):
        host.stream("chat", None, "a", host.options(num_beams=2))


def test_a_closed_stream_stops_generation(hosts):
    host = hosts["opt"]
    opts = host.options(max_new_tokens=20)
    full = host.submit_features("chat", None, PROMPTS[1], opts).result()
    with host.preparing():  # the worker waits for us: the stream is closed before it starts
        stream = host.stream("chat", None, PROMPTS[1], opts)
        stream.close()
    cut = stream.result()
    assert cut.finish_reason == "cancelled" and len(cut.text) < len(full.text)
    assert full.text.startswith(cut.text)


def test_conversation_streams_and_remembers_the_turn(demo):
    conversation = demo.chat(DEMO_IMAGE)
    deltas = list(conversation.stream("what color is the circle?"))
    assert "".join(deltas) == "red"
    assert conversation.turns == [("what color is the circle?", "red")]
    assert conversation.ask("how many shapes?", max_new_tokens=5).ok  # per-turn options on top of the chat's


def test_a_conversation_without_an_image_is_text_only(demo):
    encoded = demo.stats()["encoded"]
    conversation = demo.chat(None)
    result = conversation.ask("what color is the circle?")
    assert result.ok and demo.stats()["encoded"] == encoded
    assert result.text == demo.submit_features("chat", None, result.prompt, demo.options()).result().text
    assert result.text != demo.chat(DEMO_IMAGE).ask("what color is the circle?").text == "red"


def test_render_chat_trims_oldest_turns_counting_query_tokens_only_with_an_image(demo):
    loaded = demo.loaded
    turns = [(f"is there a circle {i}?", "yes") for i in range(10)]
    with_image = render_chat(loaded, turns, "how many shapes?", max_new_tokens=10)
    text_only = render_chat(loaded, turns, "how many shapes?", max_new_tokens=10, image=False)
    tokens = loaded.processor.tokenizer
    assert len(tokens(with_image).input_ids) + loaded.num_query_tokens + 10 <= loaded.max_positions
    assert len(tokens(text_only).input_ids) + 10 <= loaded.max_positions
    assert with_image.endswith("Question: how many shapes? Answer:") and "circle 9?" in with_image
    assert "circle 0?" not in with_image and len(text_only) > len(with_image)
    system = render_chat(loaded, [], "how many shapes?", system=" Be brief. ", max_new_tokens=10)
    assert system == "Be brief. Question: how many shapes? Answer:"
    with pytest.raises(OptionError, match="question too long"):
        render_chat(loaded, [], "why " * 60, max_new_tokens=10)


def test_encode_a_list_equals_encoding_one_by_one(demo):
    images = [scene(0), scene(1)]
    together = demo.encode(images)
    assert all(torch.equal(a, demo.encode(image)) for a, image in zip(together, images))


def test_stop_strings_leave_scores_and_finish_reasons_independent_of_the_batch(demo):
    images = sorted(str(path) for path in DEMO_IMAGE.parent.glob("*.png"))
    alone = [demo.caption(image, stop=" blue") for image in images]
    together = demo.caption(images, stop=" blue")
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.score for r in together] == pytest.approx([r.score for r in alone], rel=1e-4)
    assert any(r.text.endswith("a") for r in alone), "a stop string cut at least one caption short"
    assert all(r.finish_reason == "stop" for r in together)


def test_a_stop_string_that_begins_in_the_prompt_ends_with_reason_stop(demo):
    # "a red" + " circle": the stop string spans the prompt and the generated text
    result = demo.caption(str(DEMO_IMAGE), prompt="a red", stop="red circle", max_new_tokens=30)
    assert result.finish_reason == "stop"
    assert demo.caption(str(DEMO_IMAGE), max_new_tokens=2).finish_reason == "length"


def _shout(task: str, result: Result) -> Result:
    """A process_result hook that rewrites the text (so no prefix of the model's text is kept)."""
    return dataclasses.replace(result, text=f"<{result.text.upper()}>")


SHOUTER = SimpleNamespace(process_result=hookimpl(_shout))


def test_streams_and_chat_history_keep_the_models_text_and_chat_streams_join_to_the_processed_text(demo):
    with registered(SHOUTER, "shout"):
        conversation = demo.chat(DEMO_IMAGE)
        asked = conversation.ask("what color is the circle?")
        assert (asked.text, asked.raw_text) == ("<RED>", "red")
        assert "Answer: red. Question:" in conversation.prompt("how many shapes?")
        streaming = demo.chat(DEMO_IMAGE)
        assert "".join(streaming.stream("what color is the circle?")) == "<RED>"
        assert streaming.turns == conversation.turns == [("what color is the circle?", "red")]
        stream = demo.stream("chat", None, PROMPTS[1], demo.options(max_new_tokens=5))
        raw = "".join(stream)
        assert raw == stream.result().raw_text and stream.result().text == f"<{raw.upper()}>"
    plain = demo.chat(DEMO_IMAGE).stream("what color is the circle?")
    assert next(plain) == "red"  # without a hook the deltas come as generated


def test_conversation_and_fit_chat_count_the_turns_dropped(demo):
    loaded = demo.loaded
    turns = [(f"is there a circle {i}?", "yes") for i in range(10)]
    prompt, dropped = fit_chat(loaded, turns, "how many shapes?", max_new_tokens=10)
    assert prompt == render_chat(loaded, turns, "how many shapes?", max_new_tokens=10)
    assert 0 < dropped < 10 and f"circle {dropped}?" in prompt and f"circle {dropped - 1}?" not in prompt
    assert fit_chat(loaded, [], "how many shapes?", max_new_tokens=10)[1] == 0
    conversation = demo.chat(DEMO_IMAGE)
    conversation.turns.extend(turns)
    conversation.ask("how many shapes?", max_new_tokens=10)
    assert conversation.turns_dropped == dropped
    conversation.reset()
    assert conversation.turns_dropped == 0


def test_results_name_their_image_and_hooks_process_every_candidate(demo, tmp_path):
    seen: list[str | None] = []

    def tag(task: str, result: Result) -> Result:
        seen.append(result.image)
        return dataclasses.replace(result, text=f"{result.text} #tag")

    with registered(SimpleNamespace(process_result=hookimpl(tag)), "tag"):
        beams = demo.caption(DEMO_IMAGE, num_beams=2, n=2)
        missing = demo.caption([str(tmp_path / "missing.png")])[0]
        chat = demo.chat(DEMO_IMAGE).ask("what color is the circle?")
        asked = demo.ask(DEMO_IMAGE, ["how many shapes?"])[0]
        features = demo.submit_features("chat", demo.encode(DEMO_IMAGE), "Question: what? Answer:",
                                        demo.options()).result()
    assert beams.image == str(DEMO_IMAGE) and seen[:2] == [str(DEMO_IMAGE)] * 2
    assert [text for text, _ in beams.candidates] == [f"{text} #tag" for text in (beams.raw_text, beams.candidates[1][0][:-5])]
    assert beams.text == beams.candidates[0][0]
    assert not missing.ok and missing.image == str(tmp_path / "missing.png")
    assert chat.image == asked.image == str(DEMO_IMAGE) and seen[2:] == [str(DEMO_IMAGE)] * 2 + [None]
    assert features.image is None
