"""The training module: collator label masking (OPT and T5), the loop, seeding."""

from __future__ import annotations

import random

import pytest
import torch

from blip2plugins.building import ModelSpec, build
from blip2plugins.demo import world
from blip2plugins.errors import DataError
from blip2plugins.families import OPT, T5
from blip2plugins.training import IGNORE, Collator, Example, TrainConfig, count_parameters, lr_factor, train

SPEC = ModelSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, num_query_tokens=4)


def tiny(family: str, seed: int = 0):
    fam = OPT if family == "opt" else T5
    return build(world.corpus(fam.render_question), family, SPEC, seed=seed)  # type: ignore[arg-type]


def examples(n: int, family=OPT, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = world.random_scene(rng)
        if i % 2 == 0:
            out.append(Example(world.render(scene), "", world.caption(scene)))
        else:
            q, a = rng.choice(world.questions(scene))
            out.append(Example(world.render(scene), family.render_question(q), a))
    return out


def image() -> object:
    return world.render(world.make_scene({"circle": "red", "square": "blue"}))


def test_opt_collator_masks_everything_but_target_and_eos() -> None:
    model, processor = tiny("opt")
    tok = processor.tokenizer
    prompt = OPT.render_question("how many shapes?")
    batch = Collator(processor, "opt")([Example(image(), "", "a red circle and a blue square"),
                                        Example(image(), prompt, "two")])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    image_id = model.config.image_token_index
    for row in range(2):
        kept = labels[row] != IGNORE
        assert (ids[row, :4] == image_id).all() and not kept[:4].any()  # image slots
        assert not kept[mask[row] == 0].any()  # padding
        assert ids[row, -1] == tok.eos_token_id and kept[-1]  # EOS is learned
        assert (labels[row][kept] == ids[row][kept]).all()
        n = int(kept.sum())
        assert kept[-n:].all()  # the target is the tail
    assert tok.decode(labels[0][labels[0] != IGNORE]) == "a red circle and a blue square</s>"
    assert tok.decode(labels[1][labels[1] != IGNORE]) == " two</s>"
    # the unmasked part of row 1 is BOS + prompt: exactly what the host sends at inference
    real = ids[1][mask[1] == 1][4:]
    assert real[:-2].tolist() == tok(prompt).input_ids
    assert real[0] == tok.bos_token_id and labels[1][mask[1] == 1][4] == IGNORE


def test_opt_labels_align_with_the_end_of_the_logits() -> None:
    model, processor = tiny("opt")
    batch = Collator(processor, OPT)(examples(4))
    out = model(**batch)
    logits = out.logits[:, -batch["labels"].shape[1]:][:, :-1]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE)
    assert out.logits.shape[1] == batch["input_ids"].shape[1]
    torch.testing.assert_close(out.loss, manual)


def test_t5_collator_prompt_to_encoder_target_to_labels() -> None:
    model, processor = tiny("t5")
    tok = processor.tokenizer
    prompt = T5.render_question("what color is the circle?")
    batch = Collator(processor, T5)([Example(image(), prompt, "red"), Example(image(), "", "a red circle")])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert (ids[:, :4] == model.config.image_token_index).all()
    assert ids[0][4:].tolist() == tok(prompt).input_ids  # prompt + EOS, no target
    assert ids[1][mask[1] == 1][4:].tolist() == [tok.eos_token_id]  # empty caption prompt
    assert mask[1].tolist() == [1] * 5 + [0] * (mask.shape[1] - 5), "T5 prompts are right padded, as at inference"
    assert labels[0].tolist()[:len(tok("red").input_ids)] == tok("red").input_ids
    assert tok.decode(labels[0][labels[0] != IGNORE]) == "red</s>"
    assert tok.decode(labels[1][labels[1] != IGNORE]) == "a red circle</s>"
    assert labels[0, -1] == IGNORE  # right padding of the shorter target
    out = model(**batch)
    manual = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                                               labels.reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(out.loss, manual)


def test_lr_schedule_warms_up_then_decays() -> None:
    config = TrainConfig(steps=100, warmup=10, schedule="cosine")
    assert lr_factor(0, config) == pytest.approx(0.1)
    assert lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(55, config) == pytest.approx(0.5)
    assert lr_factor(100, config) == pytest.approx(0.0)
    assert lr_factor(55, TrainConfig(steps=100, warmup=10, schedule="linear")) == pytest.approx(0.5)


def test_unknown_method_is_refused() -> None:
    model, processor = tiny("opt")
    with pytest.raises(ValueError, match="unknown training method"):
        train(model, processor, examples(4), TrainConfig(method="nope", steps=1, progress=False))


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_full_training_lowers_the_loss(family: str) -> None:
    model, processor = tiny(family)
    data = examples(16, OPT if family == "opt" else T5)
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, log_every=5, progress=False)
    report = train(model, processor, data, config)
    assert report.method == "full" and report.steps == 30 and report.examples_seen == 240
    assert report.trainable_params == report.total_params == count_parameters(model)[1]
    assert report.final_loss < 0.7 * report.first_loss
    assert not model.training


def test_same_seed_same_weights() -> None:
    data = examples(16)
    config = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=2, seed=3, progress=False)
    states = []
    for _ in range(2):
        model, processor = tiny("opt")
        train(model, processor, data, config)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    model, processor = tiny("opt")
    train(model, processor, data, TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=2, seed=4, progress=False))
    assert not all(torch.equal(states[0][k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("workers", [0, 1])
def test_an_example_longer_than_the_context_is_refused_by_name(workers: int) -> None:
    model, processor = tiny("opt")
    question = "is there a " + " and a ".join(["red circle"] * 40) + "?"
    data = [*examples(3), Example(image(), OPT.render_question(question), "yes")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=2, batch_size=4, progress=False, num_workers=workers)
    with pytest.raises(DataError) as caught:
        train(model, processor, data, config)
    message = str(caught.value)
    assert message.startswith("a training example is too long for the model: prompt 'Question: is there a red circle")
    assert "128-token context holds 124 beside the image's 4 query tokens" in message
    assert "Traceback" not in message and "worker" not in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # its batch was the first
    assert Collator(processor, OPT, max_length=128)(data[:3])["input_ids"].shape[0] == 3  # the others fit


def test_augmentation_flips_images_at_random_and_reproducibly() -> None:
    _, processor = tiny("opt")
    batch = [Example(image(), "", "a red circle and a blue square")] * 16
    plain = Collator(processor, OPT)(batch)["pixel_values"]
    first = Collator(processor, OPT, augment=("hflip", "vflip"), seed=1)(batch)["pixel_values"]
    again = Collator(processor, OPT, augment=("hflip", "vflip"), seed=1)(batch)["pixel_values"]
    assert torch.equal(first, again)
    changed = [not torch.equal(first[i], plain[i]) for i in range(16)]
    assert 0 < sum(changed) < 16  # some flipped, some not
    mirrored = Collator(processor, OPT, augment=("hflip",), seed=1)(batch)["pixel_values"]
    assert any(torch.equal(mirrored[i], plain[i].flip(-1)) for i in range(16))
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        Collator(processor, OPT, augment=("rotate",))
