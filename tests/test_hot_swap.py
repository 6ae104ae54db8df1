"""The host swaps adapters while serving: in-flight requests finish on the old one, later ones use the new."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from blip2plugins import artifacts, hookimpl, plugins
from blip2plugins.demo import world
from blip2plugins.errors import Blip2Error
from blip2plugins.host import Host
from blip2plugins.training import TrainConfig, apply_method

IMAGES = [world.render(world.make_scene(c)) for c in
          ({"circle": "red"}, {"square": "blue", "triangle": "green"}, {"triangle": "yellow"})]


def lora(base: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with large random weights: outputs that clearly differ from the base's."""
    model = apply_method(Blip2ForConditionalGeneration.from_pretrained(base),
                         TrainConfig(method="lora", lora_rank=4, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    return artifacts.save(model, "lora", folder, base_model=str(base))


def qformer(base: Path, folder: Path) -> Path:
    model = apply_method(Blip2ForConditionalGeneration.from_pretrained(base), TrainConfig(method="qformer"))
    with torch.no_grad():
        model.language_projection.weight.mul_(-3)
    return artifacts.save(model, "qformer", folder, base_model=str(base))


def outputs(host: Host) -> list[tuple[str | None, float]]:
    return [(r.text, round(r.score or 0.0, 5)) for r in host.caption(IMAGES, max_new_tokens=6)]


def seen(futures) -> list[tuple[str | None, float]]:
    return [(f.result().text, round(f.result().score or 0.0, 5)) for f in futures]


def test_swap_between_adapters_and_back_to_the_base(tiny_opt, tmp_path) -> None:
    a, b, q = lora(tiny_opt, tmp_path / "a", 1), lora(tiny_opt, tmp_path / "b", 2), qformer(tiny_opt, tmp_path / "q")
    expected = {}
    for name, folder in (("a", a), ("b", b), ("q", q)):
        with Host.load(str(tiny_opt), adapter=str(folder)) as fresh:
            expected[name] = (outputs(fresh), fresh.model_version)
    with Host.load(str(tiny_opt)) as host:
        base = (outputs(host), host.model_version)
        assert len({tuple(o) for o, _ in [base, *expected.values()]}) == 4, "adapters must change the output"
        for name in ("a", "b", "q", "a"):
            version = host.use_adapter(str({"a": a, "b": b, "q": q}[name]))
            assert (outputs(host), version) == expected[name], name
        assert host.use_adapter(None) == base[1]
        assert outputs(host) == base[0]


class Gate:
    """Holds the worker inside its first batch until released."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    @hookimpl
    def process_result(self, task, result):
        self.entered.set()
        self.release.wait(timeout=30)


def test_requests_in_flight_finish_on_the_old_adapter(tiny_opt, tmp_path) -> None:
    a, b = lora(tiny_opt, tmp_path / "a", 1), lora(tiny_opt, tmp_path / "b", 2)
    gate = Gate()
    with Host.load(str(tiny_opt), adapter=str(a), max_batch_size=2) as host:
        old = host.model_version
        plugins.register_plugin(gate, "test-gate")
        try:
            before = [host.submit_caption(image, max_new_tokens=6) for image in IMAGES * 3]
            assert gate.entered.wait(timeout=30)  # the worker is busy with the first batch
            swapped: list[str] = []
            swapper = threading.Thread(target=lambda: swapped.append(host.use_adapter(str(b))))
            swapper.start()
            gate.release.set()
            swapper.join(timeout=60)
        finally:
            plugins.unregister_plugin("test-gate")
        after = [host.submit_caption(image, max_new_tokens=6) for image in IMAGES]
        assert {f.result().model_version for f in before} == {old}
        assert swapped and {f.result().model_version for f in after} == {swapped[0]} and swapped[0] != old
        with Host.load(str(tiny_opt), adapter=str(b)) as fresh_b, Host.load(str(tiny_opt), adapter=str(a)) as fresh_a:
            assert seen(after) == outputs(fresh_b) and seen(before) == outputs(fresh_a) * 3


def test_a_failed_swap_keeps_the_old_adapter_serving(tiny_opt, tmp_path) -> None:
    a = lora(tiny_opt, tmp_path / "a", 1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    with Host.load(str(tiny_opt), adapter=str(a)) as host:
        version, before = host.model_version, outputs(host)
        with pytest.raises(Blip2Error):
            host.use_adapter(str(broken))
        with pytest.raises(Blip2Error, match="no such folder"):
            host.use_adapter(str(tmp_path / "missing"))
        assert host.model_version == version and outputs(host) == before
