"""The fine-tuning scenarios on the demo model: a team's own word, and a colour it never saw.

Fewer held-out scenes and lower bars than the README's figures, to stay fast; the README has the
full measurements and the command that made them.
"""

from __future__ import annotations

import pytest

from blip2plugins.demo import scenarios, world
from blip2plugins.demo.recipe import host_fns
from blip2plugins.host import Host
from blip2plugins.store import AdapterStore
from blip2plugins.training.finetune import finetune


def test_the_team_words_and_nothing_else_change(tmp_path) -> None:
    labels = scenarios.vocabulary_labels(32, 32, seed=0)
    assert sum(" tile" in caption for _, caption in labels) == 32
    data = scenarios.write_labels(tmp_path / "labels", labels)
    store = AdapterStore(tmp_path / "store")
    result = finetune("demo", data, scenarios.vocabulary_config(0), store=store, name="team-words")
    assert result.report["new_words"] == ["tile"]  # the only word of the labels the model never says
    assert result.adapter is not None and result.adapter.status == "promoted"
    with Host.load("demo") as host:
        caption, _ = host_fns(host)
        before = scenarios.measure(caption, "vocabulary", n=60)
        host.use_adapter(result.adapter.path)
        after = scenarios.measure(caption, "vocabulary", n=60)
        square = world.render(world.make_scene({"square": "blue", "triangle": "red"}))
        assert host.caption(square).text == "a blue tile and a red triangle"
    assert before["team"] == 0.0 and before["plain"] >= 0.95
    assert after["team"] >= 0.85 and after["plain"] >= 0.95


@pytest.mark.slow
def test_a_colour_the_model_never_saw(tmp_path) -> None:
    data = scenarios.write_labels(tmp_path / "labels", scenarios.purple_labels(128, 512, seed=0))
    result = finetune("demo", data, scenarios.purple_config(0), out=tmp_path / "purple")
    assert result.report["new_words"] == ["purple"]
    with Host.load("demo") as host:
        caption, _ = host_fns(host)
        before = scenarios.measure(caption, "purple", n=100)
        host.use_adapter(str(tmp_path / "purple"))
        after = scenarios.measure(caption, "purple", n=100)
    assert before["purple"] == 0.0
    assert after["purple"] >= 0.6 and after["ordinary"] >= 0.9
