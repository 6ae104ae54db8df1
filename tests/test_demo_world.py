"""The demo world (scenes, captions, questions, colours), the demo recipe's data and evaluation, its commands."""

from __future__ import annotations

import json
import random

import click
import pytest
from click.testing import CliRunner

from blip2plugins.demo import MODEL_DIR, world
from blip2plugins.demo.commands import register_commands
from blip2plugins.demo.recipe import SceneExamples, evaluate
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
            assert world.SATURATION[0] <= shape.saturation <= 1 and world.VALUE[0] <= shape.value <= 1
    for colour in world.BASIC_COLOURS:  # band edges still name their colour, with margin to spare
        centre, half = world.HUE_BANDS[colour]
        for hue in (centre - half - 5, centre + half + 5):
            assert world.colour_of_hue(hue % 360) == colour


def test_purple_is_never_sampled_but_can_be_drawn() -> None:
    centre, half = world.HUE_BANDS["purple"]
    for s in scenes(2000):
        for shape in s.shapes:
            assert shape.colour != "purple"
            assert abs((shape.hue - centre + 180) % 360 - 180) > half + 20
    scene = world.make_scene({"circle": "purple"})
    (shape,) = scene.shapes
    assert shape.colour == "purple" and shape.hue == pytest.approx(285.0)
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


def test_scene_examples_are_seeded_and_mix_captions_and_questions() -> None:
    data = SceneExamples(100, seed=0)
    assert len(data) == 200
    first = [(ex.prompt, ex.target, ex.image.tobytes()) for ex in (data[i] for i in range(20))]
    assert first == [(ex.prompt, ex.target, ex.image.tobytes()) for ex in (data[i] for i in range(20))]
    assert data[0].prompt == "" and data[1].prompt.startswith("Question: ")
    assert data[0].image.tobytes() == data[1].image.tobytes()  # one scene, two examples
    assert data[2].target != SceneExamples(100, seed=1)[2].target or data[2].image.tobytes() != SceneExamples(100, seed=1)[2].image.tobytes()
    with pytest.raises(IndexError):
        data[200]


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
    assert all(opt in result.output for opt in ("--seed", "--steps", "--out", "--threads"))


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
    result = CliRunner().invoke(cli(), ["demo", "train", "--steps", "20", "--out", str(out), "--eval-scenes", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_scenes"] == 8 and 0 <= summary["caption_exact_match"] <= 1
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "README.md"} <= names
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())
    card = (out / "README.md").read_text()
    assert "blip2 demo train --seed 0 --steps 20" in card and "| caption exact match (8 captions) |" in card


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 6 minutes on an idle 2-core machine; far more when it is shared
def test_the_recipe_reaches_the_bar(tmp_path) -> None:
    from blip2plugins.demo.recipe import train_demo

    facts = train_demo(tmp_path / "demo", progress=False, log=lambda line: None)
    assert facts["metrics"]["caption_exact_match"] >= 0.98 and facts["metrics"]["vqa_accuracy"] >= 0.97
    assert facts["size_bytes"] <= 5 * 1024 * 1024


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
