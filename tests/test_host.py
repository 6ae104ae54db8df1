"""The host against plain transformers: same tokens at every batch size, both LM families."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Blip2ForConditionalGeneration, Blip2Processor
from transformers.image_processing_backends import PilBackend

from blip2plugins.errors import Blip2Error, ImageError, ModelLoadError, OptionError
from blip2plugins.host import Host

COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "gray", "cyan"]
PROMPTS = ["", "a photo of", "Question: what is it? Answer:", "the", "a red circle and"]


def scene(i: int) -> Image.Image:
    image = Image.new("RGB", (40 + 7 * i, 30 + 5 * i), COLOURS[i % len(COLOURS)])
    ImageDraw.Draw(image).ellipse((5, 5, 20 + i, 25), fill=COLOURS[(i + 3) % len(COLOURS)])
    return image


def reference(folder: Path, image: Image.Image, prompt: str, **kwargs: object) -> tuple[str, torch.Tensor]:
    """One item through processor + generate, as the transformers docs show it."""
    model = _reference_model(folder)
    processor = Blip2Processor.from_pretrained(folder)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, **kwargs)
    if model.config.text_config.model_type == "opt":
        out = out[:, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.decode(out[0], skip_special_tokens=True), out[0]


_models: dict[Path, Blip2ForConditionalGeneration] = {}


def _reference_model(folder: Path) -> Blip2ForConditionalGeneration:
    if folder not in _models:
        _models[folder] = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    return _models[folder]


@pytest.fixture(scope="module")
def hosts(tiny_opt: Path, tiny_t5: Path):
    made = {"opt": Host.load(str(tiny_opt), max_wait=0.05), "t5": Host.load(str(tiny_t5), max_wait=0.05)}
    yield made
    for host in made.values():
        host.close()


@pytest.mark.parametrize("family", ["opt", "t5"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_caption_batches_match_transformers_one_by_one(hosts, tiny_opt, tiny_t5, family, batch):
    host, folder = hosts[family], {"opt": tiny_opt, "t5": tiny_t5}[family]
    images = [scene(i) for i in range(batch)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    before = host.stats()["batches"]
    results = host.caption(images, prompt=prompts, max_new_tokens=12)
    assert host.stats()["batches"] - before == 1, "the whole list should run as one batch"
    for image, prompt, result in zip(images, prompts, results):
        text, _ = reference(folder, image, prompt)
        expected = (prompt + text).strip() if family == "opt" else text.strip()
        assert result.text == expected
        assert 0 < result.score <= 1
    assert len({r.score for r in results}) == batch, "scores should differ between images"


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_ask_batch_with_mixed_questions_matches_transformers(hosts, tiny_opt, tiny_t5, family):
    host, folder = hosts[family], {"opt": tiny_opt, "t5": tiny_t5}[family]
    questions = ["what color is the circle?", "how many shapes?", "is there a triangle?"] * 2
    images = [scene(i) for i in range(len(questions))]
    results = host.ask(images, questions, max_new_tokens=12)
    for image, question, result in zip(images, questions, results):
        text, _ = reference(folder, image, host.loaded.family.render_question(question))
        assert result.text == text.strip()
        assert result.prompt == host.loaded.family.render_question(question)


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_chat_turns_equal_reencoding_the_image_every_turn(hosts, tiny_opt, tiny_t5, family):
    host, folder = hosts[family], {"opt": tiny_opt, "t5": tiny_t5}[family]
    image = scene(4)
    conversation = host.chat(image, max_new_tokens=12)
    encodes = host.stats()["encoded"]
    for question in ["what is it?", "what color?", "why?"]:
        prompt = conversation.prompt(question)
        result = conversation.ask(question)
        text, _ = reference(folder, image, prompt)
        assert result.text == text.strip()
        assert result.prompt == prompt
    assert host.stats()["encoded"] == encodes, "chat turns must reuse the encoded image"
    assert [q for q, _ in conversation.turns] == ["what is it?", "what color?", "why?"]
    assert conversation.turns[0][0] in conversation.prompt("next?")


def test_chat_history_is_trimmed_from_the_oldest_turn(hosts):
    host = hosts["opt"]
    conversation = host.chat(scene(1), max_new_tokens=8)
    conversation.turns = [(f"question number {i}?", "an answer") for i in range(40)]
    prompt = conversation.prompt("last?")
    assert "question number 39?" in prompt and "question number 0?" not in prompt
    length = len(host.loaded.processor.tokenizer(prompt).input_ids)
    assert length + host.loaded.num_query_tokens + 8 <= host.loaded.max_positions
    assert conversation.ask("last?").ok


def test_a_question_too_long_says_whether_the_system_text_counts(hosts):
    host = hosts["opt"]
    question = "why " * 200 + "?"
    for system, context in ((None, "alone"), ("  ", "alone"), ("Answer briefly.", "with the system text")):
        with pytest.raises(OptionError, match=rf"question too long: \d+ tokens {context}; the model's"):
            host.chat(scene(0), system=system).prompt(question)
    assert host.chat(None, system="Be brief.").prompt("why?").startswith("Be brief. ")


def test_questions_and_prompts_too_big_to_print_are_one_line(hosts):
    host = hosts["opt"]
    huge = 10**5000  # repr() refuses ints of over 4,300 digits
    for call, what in ((lambda: host.ask(scene(0), huge), "a question must be a string (or a list of them)"),
                       (lambda: host.ask(scene(0), [huge]), "a question must be a string"),
                       (lambda: host.iter_answers([scene(0)], huge), "a question must be a string"),
                       (lambda: host.caption(scene(0), prompt=huge), "a prompt must be a string"),
                       (lambda: host.iter_captions("photo.png"), "iter_captions takes an iterable of images")):
        with pytest.raises(OptionError) as info:
            call()
        assert str(info.value).startswith(what) and len(str(info.value)) < 150


def test_beams_sampling_and_n_captions(hosts, tiny_opt):
    host = hosts["opt"]
    image = scene(2)
    beams = host.caption(image, num_beams=3, n=3, max_new_tokens=12)
    assert len(beams.candidates) == 3 and beams.text == beams.candidates[0][0]
    assert beams.text == reference(tiny_opt, image, "", num_beams=3)[0].strip()
    one = host.caption(image, do_sample=True, seed=7, temperature=0.9, max_new_tokens=12)
    again = host.caption(image, do_sample=True, seed=7, temperature=0.9, max_new_tokens=12)
    assert one.text == again.text, "a seed makes sampling reproducible"
    greedy = host.caption(image, max_new_tokens=12)
    assert greedy.text == host.caption(image, max_new_tokens=12).text


@pytest.mark.parametrize("options, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"temperature": 0.5}, "only apply when sampling"),
    ({"beams": 2}, "unknown generation option 'beams'"),
    ({"n": 3}, "n=3 needs do_sample=True or num_beams >= 3"),
    ({"num_beams": "4"}, "num_beams must be int"),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens (9) exceeds max_new_tokens (4)"),
])
def test_bad_generation_options_are_clear_errors(hosts, options, message):
    with pytest.raises(OptionError) as info:
        hosts["opt"].caption(scene(0), **options)
    assert message in str(info.value)


def test_one_bad_image_does_not_sink_the_batch(hosts, tmp_path):
    host = hosts["opt"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    results = host.caption([scene(0), str(broken), scene(1), "Question <image> x"], max_new_tokens=5)
    assert [r.ok for r in results] == [True, False, True, False]
    assert "broken.png" in results[1].error and "not an image" in results[1].error
    assert results[0].text == host.caption(scene(0), max_new_tokens=5).text
    with pytest.raises(ImageError):
        host.caption(str(broken))
    with pytest.raises(Blip2Error, match="image token"):
        host.caption(scene(0), prompt="look: <image>")


def test_a_prompt_that_cannot_run_fails_only_its_item(hosts):
    host = hosts["opt"]
    budget = host.loaded.prompt_budget(image=True, max_new_tokens=5)
    too_long = "a " * (budget + 5)
    results = host.caption([scene(0), scene(1), scene(2)], prompt=["", too_long, None], max_new_tokens=5)
    assert results[0].text == host.caption(scene(0), max_new_tokens=5).text
    assert "is too long" in results[1].error
    assert f"the model's {host.loaded.max_positions}-token context leaves {budget} tokens" in results[1].error
    assert results[2].error == "a prompt must be a string, got NoneType None"
    with pytest.raises(OptionError, match="leaves 0 tokens for the prompt"):
        host.caption(scene(0), max_new_tokens=host.loaded.max_positions)
    with pytest.raises(OptionError, match="a question must be a string.*got NoneType"):
        host.ask(scene(0), None)
    with pytest.raises(OptionError, match="a question must be a string, got int"):
        host.chat(scene(0)).ask(5)
    undecodable = b"what\xff?".decode("utf-8", "surrogateescape")  # as argv holds a non-UTF-8 argument
    with pytest.raises(OptionError, match=r"a question 'what\\udcff\?' is not valid UTF-8 text \(at character 4\)"):
        host.ask(scene(0), undecodable)
    assert "is not valid UTF-8 text" in host.caption([scene(0)], prompt=[undecodable])[0].error
    with pytest.raises(OptionError, match="a question is empty"):
        host.ask(scene(0), "  ")
    with pytest.raises(OptionError, match="the system text .* is not valid UTF-8"):
        host.chat(scene(0), system=undecodable).ask("what?")


def test_a_batch_that_fails_runs_again_item_by_item(tiny_opt, monkeypatch):
    with Host.load(str(tiny_opt)) as host:
        encode = host._worker._encode_prompts

        def poisoned(prompts, **kwargs):
            if any("poison" in prompt for prompt in prompts):
                raise RuntimeError("boom")
            return encode(prompts, **kwargs)

        monkeypatch.setattr(host._worker, "_encode_prompts", poisoned)
        results = host.caption([scene(0), scene(1), scene(2)], prompt=["", "poison", "a"], max_new_tokens=4)
        assert [r.error for r in results] == [None, "generation failed: boom", None]
        assert results[2].text == host.caption(scene(2), prompt="a", max_new_tokens=4).text


def test_closing_while_threads_call_leaves_no_caller_waiting(tiny_opt):
    host = Host.load(str(tiny_opt))
    outcomes: list[str] = []

    def call() -> None:
        while True:
            try:
                host.submit_ask(scene(0), "what?", max_new_tokens=2).result(timeout=30)
            except Blip2Error as exc:
                outcomes.append(str(exc))
                return

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    host.close()
    for thread in threads:
        thread.join(40)
    assert outcomes == ["the host is closed"] * 6


@pytest.mark.parametrize("options, message", [
    ({"n": 3, "num_beams": 2, "do_sample": True}, "n=3 with beam search needs num_beams >= 3, got 2"),
    ({"num_beams": 2, "length_penalty": float("nan")}, "length_penalty must be a finite number"),
    ({"do_sample": True, "seed": 2**64}, "seed must be between 0 and 18446744073709551615"),
])
def test_options_generate_would_refuse_are_refused_first(hosts, options, message):
    with pytest.raises(OptionError, match=message):
        hosts["opt"].caption(scene(0), **options)


def test_many_threads_share_one_model_and_get_batched(tiny_opt):
    images = [scene(i) for i in range(16)]
    with Host.load(str(tiny_opt), max_wait=0.05) as host:
        sequential = [host.caption(image, max_new_tokens=10).text for image in images]
        before = host.stats()
        barrier = threading.Barrier(16)

        def work(image: Image.Image) -> str:
            barrier.wait()
            return host.caption(image, max_new_tokens=10).text

        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(work, images))
        after = host.stats()
    assert concurrent == sequential
    assert after["batches"] - before["batches"] < 16, "concurrent callers should share batches"


def test_images_load_on_loader_threads_in_parallel(tiny_opt, monkeypatch):
    import blip2plugins.host as host_module

    together = threading.Barrier(3, timeout=10)  # passes only if three loads run at once

    def load_together(image, **kwargs):
        together.wait()
        return image

    with pytest.raises(OptionError, match="loader_threads must be a whole number from 1 to 1024, got 0"):
        Host.load(str(tiny_opt), loader_threads=0)
    monkeypatch.setattr(host_module, "load_image", load_together)
    with Host.load(str(tiny_opt), loader_threads=3) as host:
        results = host.caption([scene(i) for i in range(3)], max_new_tokens=3)
    assert all(r.ok for r in results), [r.error for r in results]


def test_iter_captions_reads_a_long_input_at_most_three_chunks_ahead(tiny_opt, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    pulled = []

    def images():
        for i in range(9):
            pulled.append(i)
            yield str(broken) if i == 4 else scene(i)

    with Host.load(str(tiny_opt), max_batch_size=2) as host:
        with pytest.raises(OptionError, match="num_beams"):
            host.iter_captions(images(), num_beams=0)
        assert pulled == [], "options are checked before any image is read"
        results = host.iter_captions(images(), max_new_tokens=5)
        first = next(results)
        assert len(pulled) == 6, "chunk 0 is returned once chunk 1 is queued and chunk 2 loading, no later"
        rest = list(results)
        expected = host.caption([scene(i) for i in range(9) if i != 4], max_new_tokens=5)
        answers = list(host.iter_answers((scene(i) for i in range(3)), "what is it?", max_new_tokens=4))
        assert [r.text for r in answers] == [r.text for r in host.ask([scene(i) for i in range(3)], "what is it?",
                                                                       max_new_tokens=4)]
    got = [first, *rest]
    assert len(got) == 9 and len(pulled) == 9
    assert "broken.png" in got[4].error
    assert [r.text for r in got[:4] + got[5:]] == [r.text for r in expected]


def test_results_carry_model_version_and_timings(hosts):
    result = hosts["opt"].caption(scene(0), max_new_tokens=4)
    assert result.model == hosts["opt"].name
    assert result.model_version.startswith(hosts["opt"].name + "@")
    assert {"preprocess_s", "queue_s", "encode_s", "generate_s", "total_s"} <= set(result.timings)


def test_mismatched_processor_is_refused_at_load(tiny_opt, tmp_path):
    import shutil
    folder = tmp_path / "mismatch"
    shutil.copytree(tiny_opt, folder)
    processor = Blip2Processor.from_pretrained(folder)
    processor.num_query_tokens = 7
    processor.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="7 image tokens but the model has 4 query tokens"):
        Host.load(str(folder))


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        Host.load("no-such-model")


def test_a_bad_question_fails_alone_when_the_image_is_shared(hosts):
    results = hosts["opt"].ask(scene(3), ["what is it?", "what is <image> here?", "why?"], max_new_tokens=4)
    assert [r.ok for r in results] == [True, False, True]
    assert "image token" in results[1].error


def test_a_closed_host_refuses_work(tiny_opt):
    host = Host.load(str(tiny_opt))
    host.close()
    with pytest.raises(Blip2Error, match="closed"):
        host.caption(scene(0))
    with pytest.raises(Blip2Error, match="closed"):
        host.chat(scene(0))
    with pytest.raises(Blip2Error, match="closed"):
        host.caption([scene(0), scene(1)])
    with pytest.raises(Blip2Error, match="closed"):
        host.encode([scene(0), scene(1)])


def test_a_host_nobody_closed_is_closed_at_exit(tiny_opt):
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('worker alive at exit:', host._worker.thread.is_alive()))\n"  # runs after the host's handler
        "from PIL import Image\n"
        "from blip2plugins.host import Host\n"
        f"host = Host.load({str(tiny_opt)!r})\n"
        "host.caption(Image.new('RGB', (32, 32)), max_new_tokens=2)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "worker alive at exit: False" in done.stdout


def test_a_closed_host_refuses_retrieval_work(tiny_retrieval):
    host = Host.load(str(tiny_retrieval))
    host.close()
    for call in (lambda: host.embed_images([scene(0), scene(1)]), lambda: host.embed_texts("a dog"),
                 lambda: host.match([scene(0), scene(1)], "a dog"), lambda: host.similarity(scene(0), "a dog")):
        with pytest.raises(Blip2Error, match="closed"):
            call()
    assert host.embedding_dim == 16  # what the model is stays readable


def _photo(width: int = 800, height: int = 600) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse((40 * i, 30 * i, 40 * i + 150, 30 * i + 120), fill=COLOURS[i % len(COLOURS)])
    return image


@pytest.mark.parametrize("resample", [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS])
def test_pixels_follow_the_processors_filter(tiny_opt, tmp_path, resample):
    """The host resizes with Pillow only as the processor would: with the filter its config names."""
    import json
    import shutil

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_opt, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["image_processor"]["resample"] = int(resample)
    (folder / "processor_config.json").write_text(json.dumps(config))
    photo = _photo()
    expected = Blip2Processor.from_pretrained(folder)(images=photo, return_tensors="pt")["pixel_values"][0]
    with Host.load(str(folder), retrieval=False) as host:
        assert torch.equal(host.preprocess([photo])[0], expected)
        assert torch.equal(host._pixel_rows([photo])[0], expected)  # as batches prepare them, on the loader threads


class _OwnResize:
    """An image processor of another backend than transformers' Pillow one: it resizes in its own way
    (a box filter) and normalises with the wrapped processor."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.size, self.resample = inner, inner.size, inner.resample

    def __call__(self, images: Any, **options: Any) -> Any:
        wanted = (self.size["width"], self.size["height"])
        many = images if isinstance(images, list) else [images]
        return self.inner([image.resize(wanted, Image.Resampling.BOX) for image in many], **options)


def test_a_processor_of_another_backend_resizes_itself(tiny_opt) -> None:
    """With torchvision installed transformers picks its torchvision backend, which resizes otherwise
    than Pillow: the host then leaves resizing to the processor (here a stand-in backend)."""
    photo = _photo()
    with Host.load(str(tiny_opt), retrieval=False) as host:
        own = _OwnResize(host.loaded.processor.image_processor)
        host.loaded.processor.image_processor = own
        expected = own(photo, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(host._pixel_rows([photo])[0], expected)
        assert torch.equal(host.preprocess([photo])[0], expected)
        assert not torch.equal(expected, own.inner(photo, return_tensors="pt")["pixel_values"][0])  # the filters differ


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_pixels_equal_the_torchvision_backends(tiny_opt) -> None:
    """Where torchvision is importable, transformers' processor resizes with it: the host's pixels are still its."""
    processor = Blip2Processor.from_pretrained(tiny_opt)
    assert not isinstance(processor.image_processor, PilBackend)
    photo = _photo()
    expected = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    with Host.load(str(tiny_opt), retrieval=False) as host:
        assert type(host.loaded.processor.image_processor) is type(processor.image_processor)
        assert torch.equal(host._pixel_rows([photo])[0], expected)
        assert torch.equal(host.preprocess([photo])[0], expected)


def test_pixels_equal_the_processors_unless_fast_preprocess_is_asked_for(tiny_opt, tmp_path):
    path = tmp_path / "photo.jpg"
    _photo().save(path, quality=92)
    processor = Blip2Processor.from_pretrained(tiny_opt)
    expected = processor.image_processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    with Host.load(str(tiny_opt)) as exact, Host.load(str(tiny_opt), fast_preprocess=True) as fast:
        assert torch.equal(exact.preprocess([exact._load(str(path))])[0], expected)
        quick = fast.preprocess([fast._load(str(path))])[0]
        assert not torch.equal(quick, expected)
        assert (quick - expected).abs().mean() < 0.05  # normalised units: about 1.5 grey levels
        assert fast.caption(str(path)).ok


def test_a_draft_decodes_a_jpeg_at_a_reduced_scale_that_covers_the_size(tmp_path):
    from blip2plugins.images import load_image

    _photo().save(tmp_path / "photo.jpg")
    _photo().save(tmp_path / "photo.png")
    assert load_image(str(tmp_path / "photo.jpg"), draft=(64, 64)).size == (100, 75)  # 1/8 scale, still >= 64
    assert load_image(str(tmp_path / "photo.jpg"), draft=(224, 224)).size == (400, 300)
    assert load_image(str(tmp_path / "photo.png"), draft=(64, 64)).size == (800, 600)  # PNG: no draft mode
    assert load_image(str(tmp_path / "photo.jpg")).size == (800, 600)


def test_the_prompt_api_is_what_the_host_sends(tiny_opt) -> None:
    """render_question / render_chat / count_tokens / context_size: what front-ends build prompts with."""
    image = Image.new("RGB", (40, 40), "red")
    with Host.load(str(tiny_opt), retrieval=False) as host:
        assert host.context_size == host.loaded.model.config.text_config.max_position_embeddings
        assert host.ask(image, "what color?", max_new_tokens=4).prompt == host.render_question("what color?")
        chat = host.chat(image, max_new_tokens=4)
        first = chat.ask("what color?")
        second = chat.ask("how many?")
        assert first.prompt == host.render_chat([], "what color?", max_new_tokens=4)[0]
        assert (second.prompt, 0) == host.render_chat([("what color?", first.raw_text)], "how many?", max_new_tokens=4)
        prompt = host.render_question("what color?")
        tokens = host.token_ids(prompt, special=True)
        assert host.count_tokens(prompt) == len(tokens)
        assert host.count_tokens(prompt, image=True) == len(tokens) + host.loaded.num_query_tokens
        with pytest.raises(OptionError, match="question too long"):
            host.render_chat([], "word " * host.context_size, max_new_tokens=4)
        with pytest.raises(ModelLoadError, match="cannot match"):
            host.require("match")
