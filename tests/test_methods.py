"""Training methods (lora, qformer, full), their saved artifacts, checkpoints and resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from blip2plugins import artifacts, models
from blip2plugins.demo import world
from blip2plugins.errors import ModelLoadError
from blip2plugins.families import OPT, T5
from blip2plugins.host import Host
from blip2plugins.training import Example, TrainConfig, apply_method, count_parameters, latest_checkpoint, train

IMAGES = [world.render(world.make_scene(c)) for c in ({"circle": "red"}, {"square": "blue", "triangle": "green"})]


def examples(n: int, family=OPT, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = world.random_scene(rng)
        if i % 2:
            q, a = rng.choice(world.questions(scene))
            out.append(Example(world.render(scene), family.render_question(q), a))
        else:
            out.append(Example(world.render(scene), "", world.caption(scene)))
    return out


def fresh(folder: Path) -> Blip2ForConditionalGeneration:
    return Blip2ForConditionalGeneration.from_pretrained(folder).eval()


def outputs(folder: Path, adapter: Path | None = None) -> list[tuple[str, float]]:
    with Host.load(str(folder), adapter=None if adapter is None else str(adapter)) as host:
        captions = host.caption(IMAGES, max_new_tokens=6)
        answers = host.ask(IMAGES, "what color is the circle?", max_new_tokens=4)
    return [(r.text, round(r.score, 5)) for r in captions + answers]


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_lora_targets_only_the_language_model(request, family: str) -> None:
    folder = request.getfixturevalue(f"tiny_{family}")
    names = {"opt": ("q_proj", "k_proj", "v_proj", "out_proj"), "t5": ("q", "k", "v", "o")}[family]
    model = apply_method(fresh(folder), TrainConfig(method="lora"))
    adapted = [n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A")]
    assert adapted and all(".language_model." in n and n.rsplit(".", 1)[-1] in names for n in adapted)
    # the vision encoder has its own fc1/fc2 and the Q-Former its own query/value: untouched
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    mlp = apply_method(fresh(folder), TrainConfig(method="lora", lora_mlp=True))
    mlp_adapted = {n.rsplit(".", 2)[-2] for n, _ in mlp.named_modules() if n.endswith(".lora_A")}
    assert mlp_adapted - set(names) and all(".language_model." in n for n, _ in mlp.named_modules() if n.endswith(".lora_A"))
    extra = apply_method(fresh(folder), TrainConfig(method="lora", lora_extra=(r"qformer\..*\.(query|value)",)))
    assert any(n.startswith("base_model.model.qformer.") for n, _ in extra.named_modules() if n.endswith(".lora_A"))


def test_lora_targets_that_match_nothing_are_refused(tiny_opt) -> None:
    with pytest.raises(ValueError, match="match nothing"):
        apply_method(fresh(tiny_opt), TrainConfig(method="lora", lora_targets=("no_such_layer",)))


def test_qformer_method_trains_exactly_the_bridge(tiny_opt) -> None:
    model = apply_method(fresh(tiny_opt), TrainConfig(method="qformer"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "query_tokens" in trainable and any(n.startswith("language_projection.") for n in trainable)
    assert any(n.startswith("qformer.") for n in trainable)
    assert not any(n.startswith(("vision_model.", "language_model.")) for n in trainable)
    done, total = count_parameters(model)
    assert 0 < done < total


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_saved_lora_reloads_onto_a_fresh_base_with_identical_outputs(request, tmp_path, family: str) -> None:
    folder = request.getfixturevalue(f"tiny_{family}")
    fam = OPT if family == "opt" else T5
    config = TrainConfig(method="lora", steps=8, batch_size=4, lr=5e-2, warmup=1, lora_rank=4, progress=False)
    trained = apply_method(fresh(folder), config)
    train(trained, models.load(str(folder)).processor, examples(16, fam), config)
    out = artifacts.save(trained, "lora", tmp_path / "lora", base_model=str(folder))
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(folder)

    # served by the host from a fresh base: same tokens and scores as the trained model in memory
    loaded = models.load(str(folder))
    in_memory = models.LoadedModel(loaded.preset, trained.get_base_model(), loaded.processor, loaded.family,
                                   "trained", loaded.device, loaded.dtype)
    with Host(in_memory) as host:
        expected = [(r.text, round(r.score, 5)) for r in host.caption(IMAGES, max_new_tokens=6)
                    + host.ask(IMAGES, "what color is the circle?", max_new_tokens=4)]
    assert outputs(folder, out) == expected
    assert outputs(folder, out) != outputs(folder)

    # and plain peft, without this project, loads it to the same logits
    from peft import PeftModel

    pixel = torch.rand(1, 3, 32, 32)
    ids = torch.tensor([[loaded.image_token_id] * loaded.num_query_tokens + [2, 5, 7]])
    labels = ids if fam.decoder_only else torch.tensor([[5, 7]])
    plain = PeftModel.from_pretrained(fresh(folder), str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(pixel_values=pixel, input_ids=ids, labels=labels).logits,
                                   trained.eval()(pixel_values=pixel, input_ids=ids, labels=labels).logits)


def test_saving_a_lora_asks_no_hub(tiny_opt, tmp_path, monkeypatch) -> None:
    import peft.utils.save_and_load as peft_save

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("peft asked the hub")

    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", no_network)
    loaded = models.load(str(tiny_opt))
    model = apply_method(loaded.model, TrainConfig(method="lora", progress=False))
    out = artifacts.save(model, "lora", tmp_path / "lora", base_model="Salesforce/blip2-opt-2.7b")
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("method", ["qformer", "full"])
def test_weights_artifact_holds_the_trained_subset_and_reloads_identically(tiny_opt, tmp_path, method: str) -> None:
    config = TrainConfig(method=method, steps=6, batch_size=4, lr=2e-2, warmup=1, progress=False)
    loaded = models.load(str(tiny_opt))
    model = apply_method(loaded.model, config)
    train(model, loaded.processor, examples(12), config)
    out = artifacts.save(model, method, tmp_path / method, base_model="tiny")
    from safetensors.torch import load_file

    saved = load_file(str(out / artifacts.WEIGHTS))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable
    if method == "qformer":
        assert not any(k.startswith(("vision_model.", "language_model.")) for k in saved)
    with Host(loaded) as host:
        expected = [(r.text, round(r.score, 5)) for r in host.caption(IMAGES, max_new_tokens=6)
                    + host.ask(IMAGES, "what color is the circle?", max_new_tokens=4)]
    assert outputs(tiny_opt, out) == expected

    base = fresh(tiny_opt)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    attached = artifacts.attach(base, out)
    assert any(not torch.equal(before[k], v) for k, v in base.state_dict().items())
    attached.detach()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_an_artifact_that_does_not_fit_is_a_clear_error(tiny_opt, tmp_path) -> None:
    model = apply_method(fresh(tiny_opt), TrainConfig(method="qformer"))
    out = artifacts.save(model, "qformer", tmp_path / "qformer", base_model="tiny")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(out / artifacts.WEIGHTS))
    weights["language_projection.weight"] = torch.zeros(7, 5)
    save_file(weights, str(out / artifacts.WEIGHTS))
    with pytest.raises(ModelLoadError, match=r"language_projection.weight has shape \(7, 5\)"):
        Host.load(str(tiny_opt), adapter=str(out))
    (out / artifacts.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot read weights.safetensors"):
        Host.load(str(tiny_opt), adapter=str(out))
    with pytest.raises(ModelLoadError, match="not an adapter folder"):
        Host.load(str(tiny_opt), adapter=str(tmp_path))


def test_gradient_accumulation_counts_micro_batches(tiny_opt) -> None:
    loaded = models.load(str(tiny_opt))
    config = TrainConfig(method="full", steps=3, batch_size=2, grad_accum=3, warmup=1, log_every=1, progress=False)
    report = train(loaded.model, loaded.processor, examples(24), config)
    assert report.steps == 3 and report.examples_seen == 3 * 2 * 3
    assert [s for s, _ in report.losses] == [1, 2, 3]


def test_resume_reaches_the_weights_of_an_uninterrupted_run(tiny_opt, tmp_path) -> None:
    data = examples(20)
    config = TrainConfig(method="lora", steps=8, batch_size=4, lr=1e-2, warmup=2, seed=5, log_every=2,
                         progress=False, lora_dropout=0.1, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=3,
                         eval_every=1)

    class Killed(Exception):
        pass

    def run(config: TrainConfig, kill_at: int | None = None):
        loaded = models.load(str(tiny_opt))
        model = apply_method(loaded.model, config)
        steps = iter(range(1, 100))

        def eval_fn(_model) -> dict[str, float]:
            if next(steps) == kill_at:
                raise Killed
            return {}

        report = train(model, loaded.processor, data, config, eval_fn=eval_fn)
        return report, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    straight, expected = run(TrainConfig(**{**config.__dict__, "checkpoint_dir": str(tmp_path / "other")}))
    with pytest.raises(Killed):
        run(config, kill_at=7)  # dies after the checkpoint of step 6
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-00000006"
    resumed_report, resumed = run(TrainConfig(**{**config.__dict__, "resume": True}))
    assert resumed_report.resumed_from == 6 and resumed_report.steps == 8
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    assert [s for s, _ in resumed_report.losses] == [s for s, _ in straight.losses] == [2, 4, 6, 8]
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-00000008"


def test_a_half_written_checkpoint_is_ignored(tmp_path) -> None:
    (tmp_path / ".tmp-step-00000009").mkdir()
    (tmp_path / "step-00000004").mkdir()
    (tmp_path / "step-00000004" / "trainer_state.json").write_text("{}")
    (tmp_path / "step-00000007").mkdir()  # no state file: incomplete
    assert latest_checkpoint(tmp_path).name == "step-00000004"


def test_token_rows_train_in_and_out_and_survive_detach_and_reattach(tiny_opt, tmp_path) -> None:
    """A new word needs its rows in the input embeddings and the output layer (not tied by peft here)."""
    loaded = models.load(str(tiny_opt))
    ids = tuple(loaded.processor.tokenizer(" tile", add_special_tokens=False).input_ids)
    config = TrainConfig(method="lora", steps=4, batch_size=4, lr=5e-2, warmup=1, progress=False, lora_token_ids=ids)
    model = apply_method(loaded.model, config)
    data = [Example(image, "", "a red tile") for image in IMAGES * 4]
    train(model, loaded.processor, data, config)
    out = artifacts.save(model, "lora", tmp_path / "tile", base_model=str(tiny_opt))
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in saved) and any("embed_tokens" in k for k in saved)
    first = outputs(tiny_opt, out)
    with Host.load(str(tiny_opt), adapter=str(out)) as host:
        base = host.use_adapter(None)
        host.use_adapter(str(out))  # peft's token-row wrappers were removed on detach: this attaches cleanly
        again = [(r.text, round(r.score, 5)) for r in host.caption(IMAGES, max_new_tokens=6)
                 + host.ask(IMAGES, "what color is the circle?", max_new_tokens=4)]
    assert again == first and base.endswith(models.load(str(tiny_opt)).version.split("@")[1])


def test_mixed_precision_bf16_trains_on_cpu(tiny_opt) -> None:
    loaded = models.load(str(tiny_opt))
    train(loaded.model, loaded.processor, examples(4), TrainConfig(steps=1, batch_size=4, warmup=1, progress=False))
    # a second run in the same process with another precision (accelerate keeps one global state)
    config = TrainConfig(method="lora", steps=2, batch_size=4, warmup=1, progress=False, mixed_precision="bf16")
    model = apply_method(loaded.model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    report = train(model, loaded.processor, examples(8), config)
    assert report.steps == 2 and all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
