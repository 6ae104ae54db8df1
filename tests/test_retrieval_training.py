"""ITC / ITM training losses, the retrieval trainer, the demo retrieval recipe and the shipped demo head."""

from __future__ import annotations

import json
import math
import random
import re
import sys

import click
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from blip2plugins import retrieval
from blip2plugins.building import ModelSpec, build_processor, build_retrieval_model, train_tokenizer
from blip2plugins.demo import MODEL_DIR, world
from blip2plugins.demo.commands import register_commands
from blip2plugins.demo.retrieval_recipe import (
    CaptionScenes,
    init_from_demo,
    load_retrieval,
    model_fns,
    retrieval_recall,
)
from blip2plugins.errors import DataError, ModelLoadError, OptionError
from blip2plugins.training.retrieval_losses import Temperature, itc_loss, itm_loss, sample_negatives
from blip2plugins.training.retrieval_train import RetrievalTrainConfig, train_retrieval
HEAD_DIR = MODEL_DIR / "retrieval"
TINY = ModelSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, num_query_tokens=4, max_positions=32)
shipped = pytest.mark.skipif(not (HEAD_DIR / "model.safetensors").exists(), reason="the demo retrieval head is not built")


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_itc_loss_is_the_cross_entropy_of_the_max_over_queries_similarity() -> None:
    images, texts, temperature = unit(3, 2, 4), unit(3, 4, seed=1), torch.tensor(0.1)
    sim = torch.tensor([[max(float(images[i, q] @ texts[t]) for q in range(2)) for t in range(3)] for i in range(3)])
    expected = (F.cross_entropy(sim / 0.1, torch.arange(3)) + F.cross_entropy(sim.T / 0.1, torch.arange(3))) / 2
    got = itc_loss(images, texts, torch.tensor([7, 8, 9]), temperature)
    assert torch.allclose(got, expected, atol=1e-6)
    # groups: items 0 and 1 share a caption, so each row spreads its target over both
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    soft = lambda logits: -(logits.log_softmax(dim=1) * targets).sum(dim=1).mean()  # noqa: E731
    got = itc_loss(images, texts, torch.tensor([7, 7, 9]), temperature)
    assert torch.allclose(got, (soft(sim / 0.1) + soft(sim.T / 0.1)) / 2, atol=1e-6)


def test_items_sharing_a_caption_are_not_pushed_apart() -> None:
    """A higher similarity of image 0 with text 1 lowers the loss when both items have the same caption
    (a positive) and raises it otherwise (a negative). With one-hot images, ``sim[i, t] = texts[t, i]``."""
    for groups, sign in (([1, 1, 2], -1), ([1, 3, 2], 1)):
        texts = torch.zeros(3, 3, requires_grad=True)
        itc_loss(torch.eye(3)[:, None, :], texts, torch.tensor(groups), torch.tensor(0.1)).backward()
        assert texts.grad[1, 0] * sign > 0 and texts.grad[0, 1] * sign > 0  # d loss / d sim[0, 1], sim[1, 0]
        assert texts.grad[2, 0] > 0  # the other caption is a negative either way


def test_hard_negatives_are_never_positives_and_follow_the_similarity() -> None:
    scores = torch.tensor([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    positives = torch.tensor([[True, False, False, False], [False, True, True, False], [True, True, True, True]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_negatives(scores, positives, generator) for _ in range(4000)])
    assert (draws[:, 2] == -1).all()  # every column a positive: no negative
    assert not positives[0, draws[:, 0]].any() and not positives[1, draws[:, 1]].any()
    freq = torch.bincount(draws[:, 0], minlength=4).float() / len(draws)
    expected = torch.tensor([0.0, *torch.tensor([1.0, 0.0, 2.0]).softmax(0)])
    assert torch.allclose(freq, expected, atol=0.03)
    assert set(draws[:, 1].tolist()) == {0, 3}
    again = torch.Generator().manual_seed(0)
    assert torch.equal(draws[:5], torch.stack([sample_negatives(scores, positives, again) for _ in range(5)]))


def test_the_learned_temperature_gets_a_gradient_and_is_clamped() -> None:
    temperature = Temperature(0.07)
    itc_loss(unit(4, 2, 8), unit(4, 8, seed=1), torch.arange(4), temperature()).backward()
    assert temperature.value.grad is not None and temperature.value.grad.abs() > 0
    with torch.no_grad():
        temperature.value.fill_(3.0)
    assert temperature().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="temperature"):
        Temperature(0.0)


@pytest.fixture(scope="module")
def tiny_retrieval():
    processor = build_processor(train_tokenizer(world.corpus(), "opt"), TINY)
    return build_retrieval_model(processor, TINY, seed=0), processor


def test_itm_loss_scores_positives_and_mined_negatives(tiny_retrieval) -> None:
    model, processor = tiny_retrieval
    scenes = [world.random_scene(random.Random(i)) for i in range(4)]
    pixels = processor.image_processor([world.render(s) for s in scenes], return_tensors="pt").pixel_values
    ids, mask = retrieval.tokenize(processor.tokenizer, ["a red circle", "a red circle", "a blue square", "a cat"], 16)
    groups = torch.tensor([1, 1, 2, 3])
    similarity = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        vision = retrieval.vision_states(model, pixels)
        got = itm_loss(model, vision, ids, mask, similarity, groups, torch.Generator().manual_seed(5))
        replay = torch.Generator().manual_seed(5)
        positives = groups[:, None] == groups[None, :]
        neg_text = sample_negatives(similarity, positives, replay)
        neg_image = sample_negatives(similarity.T, positives, replay)
        assert (groups[neg_text] != groups).all() and (groups[neg_image] != groups).all()
        logits = torch.cat([retrieval.itm_logits(model, vision, ids, mask),
                            retrieval.itm_logits(model, vision, ids[neg_text], mask[neg_text]),
                            retrieval.itm_logits(model, vision[neg_image], ids, mask)])
    expected = F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8))
    assert torch.allclose(got, expected, atol=1e-5)


def _train(processor, seed: int) -> tuple[dict[str, torch.Tensor], object]:
    model = build_retrieval_model(processor, TINY, seed=0)
    config = RetrievalTrainConfig(steps=3, batch_size=8, warmup=1, seed=seed, progress=False, log_every=1)
    report = train_retrieval(model, processor, CaptionScenes(24, 0), config)
    return {k: v.clone() for k, v in model.state_dict().items()}, report


def test_training_is_reproducible_and_keeps_the_vision_encoder(tiny_retrieval) -> None:
    _, processor = tiny_retrieval
    initial = build_retrieval_model(processor, TINY, seed=0).state_dict()
    first, report = _train(processor, seed=1)
    second, _ = _train(processor, seed=1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(first[k], initial[k]) for k in first if k.startswith("vision_model."))
    changed = {k.split(".")[0] for k in first if not torch.equal(first[k], initial[k])}
    assert {"qformer", "query_tokens", "embeddings", "vision_projection", "text_projection", "itm_head"} <= changed
    assert report.steps == 3 and report.examples_seen == 24 and len(report.itc_losses) == len(report.itm_losses) == 3
    assert all(math.isfinite(loss) for _, loss in report.losses) and 0.001 <= report.temperature <= 0.5
    third, _ = _train(processor, seed=2)
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_bad_training_input_is_refused(tiny_retrieval) -> None:
    model, processor = tiny_retrieval
    with pytest.raises(OptionError, match="freeze: no parameter is named 'vision'"):
        train_retrieval(model, processor, CaptionScenes(8, 0), RetrievalTrainConfig(steps=1, freeze=("vision",)))
    with pytest.raises(DataError, match="example 0: the text must be a non-empty string"):
        train_retrieval(model, processor, [(world.render(world.make_scene({"circle": "red"})), "")],
                        RetrievalTrainConfig(steps=1, progress=False))
    with pytest.raises(DataError, match="no training examples"):
        train_retrieval(model, processor, [], RetrievalTrainConfig(steps=1))
    with pytest.raises(OptionError, match="itm_weight"):
        RetrievalTrainConfig(itm_weight=-1)


def _oracle(n_scenes: int, seed: int, *, mistake: bool = False):
    """Embedders that know each rendered scene's caption (one-hot per caption); with ``mistake``, the
    text side swaps red and green, so captions with those colours point at the wrong images."""
    rng = random.Random(seed)
    scenes = [world.random_scene(rng) for _ in range(n_scenes)]
    captions = sorted({world.caption(s) for s in scenes})
    by_pixels = {world.render(s).tobytes(): world.caption(s) for s in scenes}
    one_hot = lambda c: F.one_hot(torch.tensor(captions.index(c)), len(captions)).float()  # noqa: E731
    swap = lambda c: c.replace("red", "#").replace("green", "red").replace("#", "green")  # noqa: E731

    def image_fn(images):
        return torch.stack([one_hot(by_pixels[im.tobytes()]) for im in images])[:, None, :].repeat(1, 2, 1)

    def text_fn(texts):
        return torch.stack([one_hot(swap(t) if mistake and swap(t) in captions else t) for t in texts])

    return image_fn, text_fn


def test_retrieval_recall_counts_hits_over_distinct_captions() -> None:
    perfect = retrieval_recall(*_oracle(60, 11), n_scenes=60, seed=11, batch_size=16)
    rng = random.Random(11)
    assert perfect["n_scenes"] == 60 and perfect["n_captions"] == len({world.caption(world.random_scene(rng)) for _ in range(60)})
    assert all(perfect[k] == 1.0 for k in ("text_to_image_r1", "image_to_text_r1", "text_to_image_r5", "image_to_text_r5"))
    wrong = retrieval_recall(*_oracle(60, 11, mistake=True), n_scenes=60, seed=11)
    assert wrong["text_to_image_r1"] < 0.9 and wrong["image_to_text_r1"] < 0.9
    image_fn, text_fn = _oracle(60, 11)
    match = lambda images, texts: (image_fn(images)[:, 0] * text_fn(texts)).sum(-1)  # noqa: E731
    assert retrieval_recall(image_fn, text_fn, match_fn=match, n_scenes=60, seed=11)["itm_accuracy"] == 1.0
    always = lambda images, texts: torch.full((len(images),), 0.9)  # noqa: E731
    assert retrieval_recall(image_fn, text_fn, match_fn=always, n_scenes=60, seed=11)["itm_accuracy"] == 0.5
    with pytest.raises(OptionError, match="n_scenes"):
        retrieval_recall(*_oracle(1, 0), n_scenes=0)


def test_init_from_demo_copies_the_captioning_models_parts(tmp_path) -> None:
    from transformers import Blip2ForConditionalGeneration

    model, processor = init_from_demo()
    demo = Blip2ForConditionalGeneration.from_pretrained(MODEL_DIR).state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in demo.items() if k.split(".")[0] in ("vision_model", "query_tokens"))
    assert torch.equal(state["qformer.encoder.layer.1.attention.attention.key.weight"],
                       demo["qformer.encoder.layer.1.attention.attention.key.weight"])
    assert torch.equal(state["qformer.encoder.layer.0.output.dense.weight"],
                       demo["qformer.encoder.layer.0.output_query.dense.weight"])
    assert torch.equal(state["embeddings.word_embeddings.weight"], demo["language_model.model.decoder.embed_tokens.weight"])
    assert model.config.qformer_config.hidden_dropout_prob == 0.0 and len(processor.tokenizer) == state[
        "embeddings.word_embeddings.weight"].shape[0]
    with pytest.raises(ModelLoadError, match="not a BLIP-2 captioning model folder"):
        init_from_demo(tmp_path)


def cli() -> click.Group:
    group = click.Group("blip2")
    register_commands(group)
    return group


def test_retrieval_commands_are_registered_and_refuse_a_bad_folder(tmp_path) -> None:
    result = CliRunner().invoke(cli(), ["demo", "train-retrieval", "--help"])
    assert result.exit_code == 0 and all(o in result.output for o in ("--seed", "--steps", "--out", "--threads"))
    result = CliRunner().invoke(cli(), ["demo", "eval-retrieval", "--model-dir", str(tmp_path)])
    assert isinstance(result.exception, ModelLoadError) and str(tmp_path) in str(result.exception)


@shipped
def test_shipped_head_clears_the_bar_on_fresh_scenes() -> None:
    result = CliRunner().invoke(cli(), ["demo", "eval-retrieval", "--scenes", "100", "--seed", "4321"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_scenes"] == 100 and metrics["seed"] == 4321
    assert metrics["text_to_image_r1"] >= 0.9 and metrics["image_to_text_r1"] >= 0.9
    assert metrics["text_to_image_r5"] >= 0.98 and metrics["image_to_text_r5"] >= 0.98
    assert metrics["itm_accuracy"] >= 0.9
    assert sum(p.stat().st_size for p in HEAD_DIR.iterdir() if p.is_file()) <= 3 * 1024 * 1024


@shipped
def test_shipped_card_reports_what_a_remeasure_gives() -> None:
    card = (HEAD_DIR / "README.md").read_text()
    scenes, seed = map(int, re.search(r"eval-retrieval --scenes (\d+) --seed (\d+)", card).groups())
    fns = model_fns(*load_retrieval(HEAD_DIR))
    metrics = retrieval_recall(fns.image, fns.text, match_fn=fns.match, n_scenes=scenes, seed=seed)
    for label, key in (("text->image R@1", "text_to_image_r1"), ("image->text R@1", "image_to_text_r1"),
                       ("ITM accuracy (own vs hardest caption)", "itm_accuracy")):
        trained = re.search(rf"\| {re.escape(label)} \| [0-9.]+ \| ([0-9.]+) \|", card).group(1)
        assert float(trained) == pytest.approx(metrics[key], abs=5e-4)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_itc_gathers_the_global_batch_on_two_processes(tmp_path) -> None:
    """Under ``accelerate launch`` (2 CPU processes, gloo) each process's ITC rows see every process's
    items, the mean of the local losses is the one-process loss, and ``train_retrieval`` runs."""
    import os
    import subprocess
    from pathlib import Path

    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESSES)
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 2
    expected = results[0]["expected"]
    assert sum(r["local"] for r in results) / 2 == pytest.approx(expected, abs=1e-5)
    assert all(r["grad"] > 0 and r["examples_seen"] == 2 * 2 * 4 for r in results)
    assert results[0]["weights"] == pytest.approx(results[1]["weights"], abs=1e-6)  # the processes stay in sync


_TWO_PROCESSES = """
import json
import torch
from torch.nn import functional as F
from accelerate.state import PartialState
from blip2plugins.building import ModelSpec, build_processor, build_retrieval_model, train_tokenizer
from blip2plugins.demo import world
from blip2plugins.demo.retrieval_recipe import CaptionScenes
from blip2plugins.training.retrieval_losses import itc_loss
from blip2plugins.training.retrieval_train import RetrievalTrainConfig, train_retrieval

state = PartialState(cpu=True)  # gloo on CPU: set up before the trainer's Accelerator
g = torch.Generator().manual_seed(0)
images, texts = F.normalize(torch.randn(8, 2, 4, generator=g), dim=-1), F.normalize(torch.randn(8, 4, generator=g), dim=-1)
groups = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
mine = slice(4 * state.process_index, 4 * state.process_index + 4)
local_images = images[mine].clone().requires_grad_()
local = itc_loss(local_images, texts[mine], groups[mine], torch.tensor(0.1))
local.backward()
sim = torch.einsum("iqd,td->iqt", images, texts).amax(1) / 0.1
targets = (groups[:, None] == groups[None, :]).float()
targets = targets / targets.sum(1, keepdim=True)
expected = (-(sim.log_softmax(1) * targets).sum(1).mean() - (sim.T.log_softmax(1) * targets).sum(1).mean()) / 2
spec = ModelSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, num_query_tokens=4, max_positions=32)
processor = build_processor(train_tokenizer(world.corpus(), "opt"), spec)
model = build_retrieval_model(processor, spec, seed=0)
report = train_retrieval(model, processor, CaptionScenes(32, 0),
                         RetrievalTrainConfig(steps=2, batch_size=4, warmup=1, progress=False, log_every=1))
print(json.dumps({"local": local.item(), "expected": expected.item(), "grad": local_images.grad.abs().sum().item(),
                  "examples_seen": report.examples_seen, "weights": model.itm_head.weight.flatten()[:8].tolist()}))
"""
