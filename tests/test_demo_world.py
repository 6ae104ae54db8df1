"""The demo world (scenes, captions, questions, colours), the demo recipe's data and evaluation, its commands."""

from __future__ import annotations

import json
import random

import click
import pytest
import torch
from click.testing import CliRunner

from blip2plugins.demo import MODEL_DIR, world
from blip2plugins.demo.commands import register_commands
from blip2plugins.demo.recipe import (DEMO_SPEC, FILLER, MAX_SYSTEM_CHARS, SYSTEM_TEXTS, SceneExamples, evaluate,
                                      random_system)
from blip2plugins.families import OPT


def scenes(n: int, seed: int = 0, **kwargs) -> list[world.Scene]:
    rng = random.Random(seed)
    return [world.random_scene(rng, **kwargs) for _ in range(n)]


def test_caption_lists_shapes_in_fixed_order() -> None:
    scene = world.make_scene({"triangle": "red", "circle": "blue", "square": "green"})
    assert world.caption(scene) == "a blue circle and a green square and a red triangle"
    assert world.caption(world.make_scene({"triangle": "yellow"})) == "a yellow triangle"
    for s in scenes(300):
        kinds = [s.kind for s in s.shapes]
        assert 1 <= len(kinds) <= 3 and len(set(kinds)) == len(kinds)
        assert world.caption(s) == " and ".join(f"a {x.colour} {x.kind}" for x in
                                                sorted(s.shapes, key=lambda x: world.SHAPES.index(x.kind)))


def test_questions_match_the_scene() -> None:
    kinds_seen = set()
    for s in scenes(300):
        qa = dict(world.questions(s))
        present = {x.kind: x.colour for x in s.shapes}
        assert qa["how many shapes?"] == ("one", "two", "three")[len(present) - 1]
        for kind in world.SHAPES:
            assert qa[f"is there a {kind}?"] == ("yes" if kind in present else "no")
            assert qa.get(f"what color is the {kind}?") == present.get(kind)
        kinds_seen |= {world.question_kind(q) for q in qa}
    assert kinds_seen == {"colour", "count", "presence"}


def test_hues_are_named_by_the_nearest_basic_colour_and_bands_have_gaps() -> None:
    for s in scenes(500):
        for shape in s.shapes:
            assert shape.colour in world.BASIC_COLOURS
            assert world.colour_of_hue(shape.hue) == shape.colour
            assert world.SATURATION[shape.colour][0] <= shape.saturation <= 1
            assert world.VALUE[shape.colour][0] <= shape.value <= 1
            assert world.contrast(shape.rgb, s.rgb) >= world.MIN_CONTRAST  # a person sees every shape
    for colour in world.BASIC_COLOURS:  # band edges still name their colour, with margin to spare
        centre, half = world.HUE_BANDS[colour]
        for hue in (centre - half - 5, centre + half + 5):
            assert world.colour_of_hue(hue % 360) == colour


def test_scenes_vary_in_size_shade_and_background_tone() -> None:
    sample = scenes(500)
    sizes = [shape.size for s in sample for shape in s.shapes]
    assert min(sizes) <= world.SIZE[0] + 2 and max(sizes) >= world.SIZE[1] - 2
    values = [shape.value for s in sample for shape in s.shapes if shape.colour == "green"]
    assert min(values) < 0.5 < 0.9 < max(values)  # dark and bright greens
    assert len({s.tint for s in sample}) > 100 and any(len(set(s.rgb)) > 1 for s in sample)  # tinted backgrounds


def test_purple_is_never_sampled_but_can_be_drawn() -> None:
    centre, half = world.HUE_BANDS["purple"]
    for s in scenes(2000):
        for shape in s.shapes:
            assert shape.colour != "purple"
            assert abs((shape.hue - centre + 180) % 360 - 180) > half + 20
    scene = world.make_scene({"circle": "purple"})
    (shape,) = scene.shapes
    assert shape.colour == "purple" and shape.hue == pytest.approx(world.HUE_BANDS["purple"][0])
    r, g, b = world.render(scene).getpixel((shape.x + shape.size // 2, shape.y + shape.size // 2))
    assert b > r > g + 100
    purple = scenes(20, palette=("purple",))
    assert all(x.colour == "purple" for s in purple for x in s.shapes)
    assert "purple" not in " ".join(world.all_texts()[0])
    assert " purple" in " ".join(world.corpus())  # vocabulary only


def test_render_draws_each_shape_on_its_background() -> None:
    scene = world.make_scene({"circle": "red", "square": "green", "triangle": "blue"}, background="dark")
    image = world.render(scene)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (scene.level,) * 3
    for shape in scene.shapes:
        centre = (shape.x + shape.size // 2, shape.y + shape.size * 2 // 3)
        assert image.getpixel(centre) == shape.rgb


def test_render_draws_any_canvas_with_round_shapes_and_soft_edges() -> None:
    scene = world.make_scene({"circle": "red", "square": "blue"}, background="white")
    hard = world.render(scene)
    soft = world.render(scene, supersample=4)
    assert set(hard.getdata()) == {scene.rgb, *(s.rgb for s in scene.shapes)}  # hard edges: three colours
    assert len(set(soft.getdata())) > 5  # anti-aliased: blends at the edges
    tall = world.render(scene, width=37, height=53)
    assert tall.size == (37, 53)
    circle = scene.shape("circle")
    red = [(x, y) for x in range(37) for y in range(53) if tall.getpixel((x, y)) == circle.rgb]
    width = max(x for x, _ in red) - min(x for x, _ in red)
    height = max(y for _, y in red) - min(y for _, y in red)
    assert abs(width - height) <= 1  # shapes keep their shape on any canvas


def test_looks_vary_canvas_edges_noise_and_compression() -> None:
    rng = random.Random(0)
    looks = [world.random_look(rng) for _ in range(400)]
    assert {look.supersample for look in looks} == {1, 2, 4}
    assert any(look.width != look.height for look in looks) and any(look.width == 64 for look in looks)
    assert all(28 <= look.width <= 160 and 28 <= look.height <= 160 for look in looks)
    assert 0.2 < sum(bool(look.noise) for look in looks) / 400 < 0.4
    assert 0.25 < sum(look.jpeg is not None for look in looks) / 400 < 0.45
    scene = world.make_scene({"triangle": "green"}, background="gray")
    look = world.Look(width=50, height=80, supersample=2, noise=6.0, jpeg=40)
    image = world.draw(scene, look, seed=3)
    assert image.size == (50, 80) and image.mode == "RGB"
    assert image.tobytes() == world.draw(scene, look, seed=3).tobytes() != world.draw(scene, look, seed=4).tobytes()


def test_rough_looks_degrade_far_more_and_leave_the_other_looks_as_they_were() -> None:
    rng = random.Random(0)
    rough = [world.rough_look(rng) for _ in range(400)]
    assert all(14 <= look.width <= 160 and 14 <= look.height <= 160 for look in rough)
    assert any(max(look.width, look.height) > 2.5 * min(look.width, look.height) for look in rough)
    assert any(max(look.width, look.height) < 28 for look in rough)
    assert 0.4 < sum(look.noise >= 10 for look in rough) / 400 < 0.6
    assert 0.5 < sum(look.jpeg is not None and look.jpeg <= 40 for look in rough) / 400 < 0.7
    keys = [f"0:{i}" for i in range(400)]
    plain = [world.training_look(random.Random(i), key, 0.0) for i, key in enumerate(keys)]
    assert plain == [world.random_look(random.Random(i)) for i in range(400)]
    mixed = [world.training_look(random.Random(i), key, 0.15) for i, key in enumerate(keys)]
    changed = [a != b for a, b in zip(plain, mixed)]
    assert 0.08 < sum(changed) / 400 < 0.22  # the rough share; every other look is the one it was
    assert mixed == [world.training_look(random.Random(i), key, 0.15) for i, key in enumerate(keys)]


def test_same_seed_same_scenes() -> None:
    a, b, c = scenes(50, seed=7), scenes(50, seed=7), scenes(50, seed=8)
    assert a == b and a != c
    assert [world.render(s).tobytes() for s in a] == [world.render(s).tobytes() for s in b]
    assert world.make_scene({"circle": "red"}) == world.make_scene({"circle": "red"})


def test_corpus_covers_every_text() -> None:
    captions, qa = world.all_texts()
    assert len(captions) == 3 * 4 + 3 * 16 + 64
    lines = set(world.corpus(OPT.render_question))
    assert set(captions) <= lines
    assert "Question: how many shapes? Answer: three" in lines


def test_scene_examples_are_seeded_and_mix_captions_questions_and_conversations() -> None:
    data = SceneExamples(300, seed=0, questions_per_scene=2)
    assert len(data) == 900
    first = [(ex.prompt, ex.target, ex.image.tobytes()) for ex in (data[i] for i in range(40))]
    assert first == [(ex.prompt, ex.target, ex.image.tobytes()) for ex in (data[i] for i in range(40))]
    assert first != [(ex.prompt, ex.target, ex.image.tobytes()) for ex in (SceneExamples(300, seed=1)[i] for i in range(40))]
    examples = [data[i] for i in range(len(data))]
    prompts = [ex.prompt for ex in examples]
    assert 0.25 < prompts.count("") / len(prompts) < 0.42  # a third captions
    chats = [p for p in prompts if p.count("Question: ") > 1]
    assert 0.33 < len(chats) / len(prompts) < 0.47  # 40% questions after past turns
    assert {p.count("Question: ") for p in chats} == {2, 3, 4, 5}  # 1 to 4 past turns, then the question
    assert 0.4 < sum(p.count("Question: ") == 5 for p in chats) / len(chats) < 0.6  # 4 past turns half the time
    asked = [p for p in prompts if p]
    assert all(p.endswith("? Answer:") for p in asked)
    assert 0.4 < sum(not p.startswith("Question: ") for p in asked) / len(asked) < 0.6  # a system text first
    assert len({ex.image.size for ex in examples}) > 50  # drawn in many looks
    with pytest.raises(IndexError):
        data[900]


def test_random_system_texts_are_common_ones_or_unseen_words_up_to_a_cap() -> None:
    rng = random.Random(0)
    texts = [random_system(rng) for _ in range(2000)]
    common = [t for t in texts if t in SYSTEM_TEXTS]
    assert 0.25 < len(common) / len(texts) < 0.35
    made = [t for t in texts if t not in SYSTEM_TEXTS]
    assert max(len(t) for t in made) <= MAX_SYSTEM_CHARS and all(t.endswith(".") for t in made)
    words = {w.strip(".").lower() for t in made for w in t.split()}
    assert set(FILLER) < words and len(words - set(FILLER)) > 1000  # words of random letters too


def test_the_longest_training_chats_fill_the_prompt_room_and_fit_the_context() -> None:
    from transformers import AutoTokenizer

    from blip2plugins.generation import MAX_NEW_TOKENS_DEFAULT

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    data = SceneExamples(20000, seed=0, questions_per_scene=2)
    prompts, texts = [], []
    for i in range(len(data)):
        prompt, target = data.text(data.scene(i), i)
        prompts.append(prompt)
        texts.append(f"{prompt} {target}" if prompt else target)
    longest_prompt = max(len(ids) for ids in tokenizer(prompts).input_ids)
    longest_text = max(len(ids) for ids in tokenizer(texts).input_ids) + 1  # + EOS
    room = DEMO_SPEC.max_positions - DEMO_SPEC.num_query_tokens - MAX_NEW_TOKENS_DEFAULT  # what the host leaves a prompt
    assert room - 10 <= longest_prompt <= room
    assert DEMO_SPEC.num_query_tokens + longest_text <= DEMO_SPEC.max_positions


def test_drawn_scene_examples_cycle_through_pictures_drawn_up_front() -> None:
    from transformers import BlipImageProcessor

    processor = BlipImageProcessor(size={"height": 64, "width": 64})
    data = SceneExamples(30, seed=0, questions_per_scene=2)
    drawn = data.drawn(20, processor, workers=2)
    assert len(drawn) == len(data) == 90 and drawn.pictures.shape == (20, 3, 64, 64)
    assert drawn.scenes == [data.scene(i) for i in range(20)]
    expected = processor([data.picture(3)[0]], do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
    assert torch.equal(drawn.pictures[3], torch.from_numpy(expected.round().clip(0, 255).astype("uint8")))
    assert [drawn[i][1:] for i in range(20)] == [data[i][1:] for i in range(20)]  # same texts as drawn lazily
    assert drawn[23].image.tobytes() == drawn[3].image.tobytes()  # picture 3 again, with a text of its own
    assert data.text(data.scene(3), 23) == drawn[23][1:]


def test_kind_colours_name_each_kind_slot() -> None:
    from blip2plugins.demo.vision_pretrain import kind_colours

    assert kind_colours(world.make_scene({"circle": "red", "triangle": "yellow"})) == [1, 0, 4]
    assert kind_colours(world.make_scene({"square": "blue"})) == [0, 3, 0]


def test_the_vision_pool_pairs_plain_scenes_with_the_whole_world() -> None:
    from transformers import BlipImageProcessor

    from blip2plugins.demo.vision_pretrain import vision_pool

    processor = BlipImageProcessor(size={"height": 48, "width": 48})
    pixels, labels = vision_pool(60, 0, processor, workers=1)
    assert pixels.shape == (60, 3, 48, 48) and pixels.dtype == torch.uint8
    assert labels.shape == (60, 3) and int(labels.min()) >= 0 and int(labels.max()) <= 4
    assert bool((labels > 0).any(1).all())  # every scene has a shape
    again, _ = vision_pool(60, 0, processor, workers=2)
    assert torch.equal(pixels, again)  # the same pool, whatever the workers
    # odd entries: plain 64 px scenes, whose corners show the background; even ones vary in look
    plain_corners = pixels[1::2, :, 0, 0].float()
    assert bool((plain_corners.std(0) > 20).any())  # white, gray and dark backgrounds
    assert not torch.equal(pixels[0], pixels[2])


def test_vision_pretraining_lowers_its_loss() -> None:
    from transformers import BlipImageProcessor, Blip2VisionConfig, Blip2VisionModel

    from blip2plugins.demo.vision_pretrain import pretrain_vision

    torch.manual_seed(0)
    model = Blip2VisionModel(Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=32, patch_size=8))
    facts = pretrain_vision(model, BlipImageProcessor(size={"height": 32, "width": 32}), seed=0, steps=120,
                            batch_size=32, pool=400, warmup=10, log=lambda line: None)
    assert facts["vision_final_loss"] < 0.9 * facts["vision_first_loss"]
    assert not model.training


def test_training_conversations_are_the_prompts_the_host_renders() -> None:
    from blip2plugins.prompts import fit_chat
    from blip2plugins.host import Host
    from blip2plugins.prompts import chat_text

    past = [("what color is the circle?", "red"), ("how many shapes?", "two")]
    with Host.load("demo") as host:
        for system in (None, "You are a helpful assistant."):
            rendered, dropped = fit_chat(host.loaded, past, "is there a square?", system=system, max_new_tokens=4)
            assert dropped == 0 and rendered == chat_text(OPT, past, "is there a square?", system)


def test_evaluate_scores_any_answerer() -> None:
    truth = {world.render(s).tobytes(): s for s in scenes(40, seed=5)}

    def caption_fn(images):
        return [world.caption(truth[im.tobytes()]) for im in images]

    def ask_fn(images, qs):
        return [dict(world.questions(truth[im.tobytes()]))[q] for im, q in zip(images, qs)]

    perfect = evaluate(caption_fn, ask_fn, n_scenes=40, seed=5, batch_size=7)
    assert perfect["caption_exact_match"] == perfect["vqa_accuracy"] == 1.0 and perfect["mistakes"] == []
    assert perfect["n_questions"] == sum(len(world.questions(s)) for s in truth.values())
    wrong = evaluate(lambda ims: ["a red circle"] * len(ims), lambda ims, qs: ["yes"] * len(ims), n_scenes=40, seed=5)
    assert wrong["caption_exact_match"] < 0.2 and 0 < wrong["vqa_presence"] < 1 and wrong["vqa_count"] == 0


def cli() -> click.Group:
    group = click.Group("blip2")
    register_commands(group)
    return group


def test_demo_commands_are_registered() -> None:
    result = CliRunner().invoke(cli(), ["demo", "--help"])
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output
    result = CliRunner().invoke(cli(), ["demo", "train", "--help"])
    assert all(opt in result.output for opt in ("--seed", "--vision-steps", "--steps", "--out", "--threads"))


@pytest.mark.skipif(not (MODEL_DIR / "model.safetensors").exists(), reason="the demo model is not built")
def test_shipped_model_meets_the_bar() -> None:
    result = CliRunner().invoke(cli(), ["demo", "eval", "--scenes", "200", "--seed", "12345"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["caption_exact_match"] >= 0.98 and metrics["vqa_accuracy"] >= 0.97
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file())
    assert size <= 5 * 1024 * 1024
    assert "caption exact match" in (MODEL_DIR / "README.md").read_text()


def test_demo_train_command_writes_a_loadable_model_and_card(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli(), ["demo", "train", "--vision-steps", "5", "--steps", "20", "--out", str(out),
                                         "--eval-scenes", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_scenes"] == 8 and 0 <= summary["caption_exact_match"] <= 1
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "README.md"} <= names
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    card = (out / "README.md").read_text()
    assert "blip2 demo train --seed 0 --vision-steps 5 --steps 20 --eval-scenes 8" in card and "| caption exact match (8 captions) |" in card


@pytest.mark.slow
def test_the_recipe_is_reproducible_from_its_seed(tmp_path) -> None:
    """A short run of the recipe, twice: the same weights to the bit, and a falling loss."""
    from blip2plugins.demo.recipe import train_demo

    runs = [train_demo(tmp_path / name, vision_steps=100, steps=60, warmup=10, eval_scenes=10, progress=False,
                       log=lambda line: None)
            for name in ("a", "b")]
    assert runs[0]["final_loss"] == runs[1]["final_loss"] < runs[0]["first_loss"]
    assert runs[0]["vision_final_loss"] == runs[1]["vision_final_loss"] < runs[0]["vision_first_loss"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_evaluate_takes_pictures_from_any_renderer() -> None:
    from blip2plugins.demo.recipe import Picture

    flipped = [Picture(world.render(s).transpose(0), world.caption(s), world.questions(s)) for s in scenes(12, seed=9)]
    truth = {p.image.tobytes(): p for p in flipped}
    metrics = evaluate(lambda ims: [truth[im.tobytes()].caption for im in ims],
                       lambda ims, qs: [dict(truth[im.tobytes()].questions)[q] for im, q in zip(ims, qs)],
                       scenes=flipped, batch_size=5)
    assert metrics["n_scenes"] == 12 and metrics["caption_exact_match"] == metrics["vqa_accuracy"] == 1.0


def test_evaluate_chat_scores_each_turn_and_counts_refused_ones() -> None:
    from blip2plugins.demo.recipe import evaluate_chat, pictures
    from blip2plugins.host import Host

    shown = pictures(16, seed=3)
    with Host.load("demo") as host:
        metrics = evaluate_chat(host, shown, turns=3, seed=0)
        assert len(metrics["per_turn"]) == 3 and metrics["conversations"] == 16 and metrics["refused"] == 0
        assert metrics["per_turn"][0] >= 0.9  # a first question about its own renderer's scenes
        crowded = evaluate_chat(host, shown[:4], turns=2, system="please " * 200)
    assert crowded["per_turn"] == [0.0, 0.0] and crowded["refused"] == 8 and "too long" in crowded["first_refusal"]
