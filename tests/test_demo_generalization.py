"""The bundled demo model on scenes it never saw drawn: the independent painter of ``tests/independent``.

Its shapes, shades, sizes, backgrounds and edges are its own; the model never trains on them. The
bars are what a model of the world, not of one drawing routine, must reach.
"""

from __future__ import annotations

import pytest

from blip2plugins.demo import MODEL_DIR
from blip2plugins.demo.recipe import Picture, evaluate, evaluate_chat, host_fns
from blip2plugins.demo.retrieval_recipe import load_retrieval, model_fns, retrieval_recall
from blip2plugins.host import Host
from independent import painter

pytestmark = pytest.mark.slow


def missed(reason: str) -> pytest.MarkDecorator:
    """A bar the shipped model misses, as measured here (strict: a model that meets it must drop the mark)."""
    return pytest.mark.xfail(strict=True, reason=f"the demo model misses this bar: {reason}")


#: Looks at which the shipped model misses the 0.97 caption bar.
MISSED_LOOKS = {"37x53": "caption exact match 0.966"}

N_SCENES = 500
#: A system text as an agent framework sends one (ChatBlip2 makes it the prompt's preamble).
SYSTEM = "You help a labeling team. Reply with a single short answer about the picture."


@pytest.fixture(scope="module")
def scenes() -> list[painter.Scene]:
    return painter.scenes(N_SCENES, "generalization")


def pictures(scenes: list[painter.Scene], look=painter.LOOKS["64x64"]) -> list[Picture]:
    return [Picture(look(s), painter.caption(s), painter.questions(s)) for s in scenes]


@pytest.fixture(scope="module")
def host():
    with Host.load("demo") as loaded:
        yield loaded


@pytest.mark.parametrize("look", [pytest.param(look, marks=missed(MISSED_LOOKS[look])) if look in MISSED_LOOKS else look
                                  for look in painter.LOOKS])
def test_captions_and_answers_hold_on_another_renderer(host, scenes, look) -> None:
    metrics = evaluate(*host_fns(host), scenes=pictures(scenes, painter.LOOKS[look]))
    assert metrics["n_scenes"] == N_SCENES
    assert metrics["caption_exact_match"] >= 0.97, metrics["mistakes"]
    assert metrics["vqa_accuracy"] >= 0.97, metrics["mistakes"]


def test_retrieval_holds_on_another_renderer(scenes) -> None:
    fns = model_fns(*load_retrieval(MODEL_DIR / "retrieval"))
    metrics = retrieval_recall(fns.image, fns.text, scenes=pictures(scenes))
    assert metrics["text_to_image_r1"] >= 0.95 and metrics["image_to_text_r1"] >= 0.95, metrics


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_every_turn_of_a_five_turn_chat_is_answered_as_well_as_the_first(host, scenes, system) -> None:
    metrics = evaluate_chat(host, pictures(scenes[:200]), turns=5, seed=1, system=system)
    assert metrics["conversations"] == 200
    assert metrics["worst_turn"] >= 0.95, metrics["per_turn"]
