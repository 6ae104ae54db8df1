"""The bundled demo model, through the host: small enough to ship, and as accurate as its card says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blip2plugins.demo import MODEL_DIR, world
from blip2plugins.demo.recipe import evaluate, host_fns
from blip2plugins.host import Host

FRESH_SEED = 424242  # neither the training seed nor the card's evaluation seed


def card_number(label: str) -> float:
    """A number from the held-out table of the model card (README.md in the model folder)."""
    match = re.search(rf"^\| {re.escape(label)} \(\d+ \w+\) \| ([0-9.]+) \|$", (MODEL_DIR / "README.md").read_text(), re.M)
    assert match, f"the model card has no {label!r} row"
    return float(match.group(1))


@pytest.fixture(scope="module")
def host():
    with Host.load("demo") as loaded:
        yield loaded


def test_demo_model_is_small_enough_to_ship():
    assert sum(f.stat().st_size for f in MODEL_DIR.iterdir() if f.is_file()) <= 5 * 1024 * 1024
    assert sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file()) <= 10 * 1000 * 1000  # with the retrieval head
    assert (MODEL_DIR / "model.safetensors").stat().st_mode & 0o044 == 0o044, "weights must be world-readable"


@pytest.mark.slow
def test_demo_model_meets_its_card_on_fresh_scenes(host):
    metrics = evaluate(*host_fns(host), n_scenes=300, seed=FRESH_SEED)
    # 300 fresh scenes: allow two standard errors of sampling noise below the card's figure.
    assert metrics["caption_exact_match"] >= card_number("caption exact match") - 0.02
    assert metrics["vqa_accuracy"] >= card_number("VQA accuracy") - 0.02


def test_demo_model_answers_the_example_scenes(host):
    scene = world.make_scene({"circle": "red", "square": "blue"})
    image = world.render(scene)
    assert host.caption(image).text == "a red circle and a blue square"
    assert host.ask(image, "how many shapes?").text == "two"
    assert host.ask(image, "is there a triangle?").text == "no"
    # Trained on single questions only: the first turn of a chat is one (later turns carry history
    # it never saw; see the model card).
    assert host.chat(image).ask("what color is the square?").text == "blue"


def test_main_job_captions_the_example_images(host):
    """The README's main job: each example image's name spells its scene, e.g. red-circle_blue-square_on-white.png."""
    images = sorted((Path(__file__).parents[1] / "examples" / "images").glob("*.png"))
    assert len(images) >= 5
    expected = [" and ".join(f"a {part.replace('-', ' ')}" for part in image.stem.split("_")[:-1]) for image in images]
    assert [r.text for r in host.caption([str(p) for p in images])] == expected
