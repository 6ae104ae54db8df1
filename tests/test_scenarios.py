"""The fine-tuning scenarios on the demo model: a team's own word, and a colour it never saw.

The team's labels are demo-world pictures (world.py), as a team's own images would be; the held-out
pictures scored before and after training come from the independent painter (``tests/independent``),
which the model never trains on. Fewer held-out scenes than the README's figures, to stay fast.

Measured with seed 0 on 200 painter scenes of each kind (``docs/fine-tuning.md`` has the table):
vocabulary: team 0.0 -> 0.95, plain 0.985 -> 0.975; purple: purple 0.0 -> 0.75, ordinary 0.995 -> 0.975.
The bars sit a margin below these.
"""

from __future__ import annotations

import pytest

from blip2plugins.demo import scenarios, world
from blip2plugins.demo.recipe import host_fns
from blip2plugins.host import Host
from blip2plugins.store import AdapterStore
from blip2plugins.training.finetune import finetune
from independent import painter


def team_words(scene: painter.Scene) -> str:
    return scenarios.in_team_words((s.kind, s.colour) for s in scene.shapes)


def painted(labelled: list[tuple[painter.Scene, str]]) -> list[scenarios.Example]:
    return [(painter.paint(scene), text) for scene, text in labelled]


def vocabulary_held_out(n: int) -> dict[str, list[scenarios.Example]]:
    """``team``: painter scenes with a square, expected in the team's words; ``plain``: without a square."""
    team = painter.scenes(n, "held-out-team", keep=lambda s: "square" in s.kinds())
    plain = painter.scenes(n, "held-out-plain", keep=lambda s: "square" not in s.kinds())
    return {"team": painted([(s, team_words(s)) for s in team]),
            "plain": painted([(s, painter.caption(s)) for s in plain])}


def purple_held_out(n: int) -> dict[str, list[scenarios.Example]]:
    """``purple``: painter scenes with a purple shape; ``ordinary``: the basic colours only."""
    purple = painter.scenes(n, "held-out-purple", palette=(*painter.BASIC, "purple"),
                            keep=lambda s: any(shape.colour == "purple" for shape in s.shapes))
    ordinary = painter.scenes(n, "held-out-ordinary")
    return {"purple": painted([(s, painter.caption(s)) for s in purple]),
            "ordinary": painted([(s, painter.caption(s)) for s in ordinary])}


def test_the_team_words_and_nothing_else_change(tmp_path) -> None:
    labels = scenarios.vocabulary_labels(32, 32, seed=0)
    assert sum(" tile" in caption for _, caption in labels) == 32
    data = scenarios.write_labels(tmp_path / "labels", labels)
    store = AdapterStore(tmp_path / "store")
    result = finetune("demo", data, scenarios.vocabulary_config(0), store=store, name="team-words")
    assert result.report["new_words"] == ["tile"]  # the only word of the labels the model never says
    assert result.adapter is not None and result.adapter.status == "promoted"
    held_out = vocabulary_held_out(60)
    with Host.load("demo") as host:
        caption, _ = host_fns(host)
        before = scenarios.score(caption, held_out)
        host.use_adapter(result.adapter.path)
        after = scenarios.score(caption, held_out)
        square = world.render(world.make_scene({"square": "blue", "triangle": "red"}))
        assert host.caption(square).text == "a blue tile and a red triangle"
    assert before["team"] == 0.0 and before["plain"] >= 0.95, before
    assert after["team"] >= 0.85 and after["plain"] >= 0.95, after


@pytest.mark.slow
def test_a_colour_the_model_never_saw(tmp_path) -> None:
    data = scenarios.write_labels(tmp_path / "labels", scenarios.purple_labels(128, 512, seed=0))
    result = finetune("demo", data, scenarios.purple_config(0), out=tmp_path / "purple")
    assert result.report["new_words"] == ["purple"]
    held_out = purple_held_out(100)
    with Host.load("demo") as host:
        caption, _ = host_fns(host)
        before = scenarios.score(caption, held_out)
        host.use_adapter(str(tmp_path / "purple"))
        after = scenarios.score(caption, held_out)
    assert before["purple"] == 0.0, before
    assert after["purple"] >= 0.6 and after["ordinary"] >= 0.9, after
