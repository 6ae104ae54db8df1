"""The host swaps adapters while serving: in-flight requests finish on the old one, later ones use the new."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Blip2ForConditionalGeneration

from blip2plugins import artifacts, hookimpl, plugins
from blip2plugins.demo import world
from blip2plugins.errors import Blip2Error, ModelLoadError
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


def misfit_lora(good: Path, folder: Path) -> Path:
    """A copy of the LoRA in ``good`` with one tensor a row too long: it does not fit the model."""
    shutil.copytree(good, folder)
    weights = load_file(str(folder / artifacts.LORA_WEIGHTS))
    key = sorted(k for k in weights if "lora_B" in k)[-1]
    weights[key] = torch.cat([weights[key], weights[key][:1]])
    save_file(weights, str(folder / artifacts.LORA_WEIGHTS))
    return folder


def exact(host: Host) -> list[tuple[str | None, float | None]]:
    return [(r.text, r.score) for r in host.caption(IMAGES, max_new_tokens=6)]


@pytest.mark.parametrize("serving", [None, "a", "q"])
def test_an_adapter_that_does_not_fit_is_attached_all_or_nothing(tiny_opt, tmp_path, serving) -> None:
    a, q = lora(tiny_opt, tmp_path / "a", 1), qformer(tiny_opt, tmp_path / "q")
    bad = misfit_lora(lora(tiny_opt, tmp_path / "b", 2), tmp_path / "bad")
    with Host.load(str(tiny_opt), adapter=None if serving is None else str({"a": a, "q": q}[serving])) as host:
        before, version = exact(host), host.model_version
        errors = []
        for _ in range(2):  # a retry fails the same way (no half-attached adapter left to collide with)
            with pytest.raises(ModelLoadError) as caught:
                host.use_adapter(str(bad))
            errors.append(str(caught.value))
            assert (exact(host), host.model_version) == (before, version)
        assert errors[0] == errors[1] and "has shape (33, 4), the model's is (32, 4)" in errors[0]
        assert "\n" not in errors[0]
        assert not any("bad_" in key for key in host.loaded.model.state_dict())
        swapped = host.use_adapter(str(a))
        with Host.load(str(tiny_opt), adapter=str(a)) as fresh:
            assert (exact(host), swapped) == (exact(fresh), fresh.model_version)


def test_a_weights_copy_that_fails_midway_is_undone(tiny_opt, tmp_path, monkeypatch) -> None:
    q = qformer(tiny_opt, tmp_path / "q")
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = load_file(str(q / artifacts.WEIGHTS))
    last = sorted(weights)[-1]

    class Unconvertible(torch.Tensor):
        def to(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    weights[last] = weights[last].as_subclass(Unconvertible)
    monkeypatch.setattr(artifacts, "load_file", lambda path: weights)
    with pytest.raises(ModelLoadError, match="cannot convert"):
        artifacts.attach(model, q)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("cut", [0, 5, 100])
def test_a_truncated_lora_file_is_one_line_and_changes_nothing(tiny_opt, tmp_path, cut) -> None:
    bad = Path(shutil.copytree(lora(tiny_opt, tmp_path / "a", 1), tmp_path / "bad"))
    data = (bad / artifacts.LORA_WEIGHTS).read_bytes()
    (bad / artifacts.LORA_WEIGHTS).write_bytes(data[:len(data) - cut] if cut > 5 else data[:cut])
    with pytest.raises(ModelLoadError, match=f"cannot read {artifacts.LORA_WEIGHTS}"):
        Host.load(str(tiny_opt), adapter=str(bad))
    with Host.load(str(tiny_opt)) as host:
        before = exact(host)
        with pytest.raises(ModelLoadError, match=f"cannot read {artifacts.LORA_WEIGHTS}"):
            host.use_adapter(str(bad))
        assert exact(host) == before and not getattr(host.loaded.model, "peft_config", None)


@pytest.mark.parametrize(("config", "reason"), [
    ("[" * 100_000, "nested more than 64 levels deep"),
    ('{"r": ' + "9" * 5000 + "}", "a number of 5,000 digits"),
    ("[1, 2]", "not a JSON object"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_a_hostile_adapter_config_is_one_line(tiny_opt, tmp_path, config, reason) -> None:
    bad = Path(shutil.copytree(lora(tiny_opt, tmp_path / "a", 1), tmp_path / "bad"))
    path = bad / artifacts.PEFT_CONFIG
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_opt)
    assert artifacts.touches(model, bad, "vision_model")  # unreadable: assume the worst
    with pytest.raises(ModelLoadError, match=re.escape(reason)) as caught:
        artifacts.attach(model, bad)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("adapter", "reason"), [
    ("base@" + "1" * 4400, "(4,402 characters) is not a version id like v0003"),
    ("x" * 300, "adapter name 'xxxxxxxx"),
    ("a\x00b", "adapter name 'a\\x00b' must be"),
    (5, "got int"),
], ids=["4400-digit-version", "300-char-name", "nul", "int"])
def test_adapter_references_that_name_nothing_are_one_line(tiny_opt, tmp_path, monkeypatch, adapter, reason) -> None:
    monkeypatch.setenv("BLIP2_ADAPTER_STORE", str(tmp_path))
    with Host.load(str(tiny_opt)) as host:
        before = (exact(host), host.model_version)
        with pytest.raises(ModelLoadError) as caught:
            host.use_adapter(adapter)
        assert reason in str(caught.value) and "\n" not in str(caught.value) and len(str(caught.value)) < 600
        assert (exact(host), host.model_version) == before


def test_an_adapter_config_peft_refuses_at_length_is_one_short_line(tiny_opt, tmp_path) -> None:
    bad = Path(shutil.copytree(lora(tiny_opt, tmp_path / "a", 1), tmp_path / "bad"))
    config = json.loads((bad / artifacts.PEFT_CONFIG).read_text())
    (bad / artifacts.PEFT_CONFIG).write_text(json.dumps({**config, "peft_type": "x" * 1_000_000}))
    with pytest.raises(ModelLoadError) as caught:
        artifacts.attach(Blip2ForConditionalGeneration.from_pretrained(tiny_opt), bad)
    assert len(str(caught.value)) < 500 and "\n" not in str(caught.value)


def test_a_home_folder_that_does_not_exist_is_one_line(tiny_opt, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BLIP2_ADAPTER_STORE", str(tmp_path))
    with Host.load(str(tiny_opt)) as host:
        with pytest.raises(ModelLoadError, match="adapter ~nobody-such-user/x: no such folder"):
            host.use_adapter("~nobody-such-user/x")
