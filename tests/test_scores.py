"""A result's score is the documented formula over the tokens the model generated, whatever they are."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from blip2plugins.host import Host

IMAGE = Image.new("RGB", (40, 40), (200, 30, 30))


def _favour_pad(model: Any, steps: set[int] | None) -> Any:
    """Make the language model emit its pad token (T5: id 0) at the given decoding steps (None: all).

    Returns the hook handle and a reset function for the step counter."""
    seen = {"step": 0}
    pad = model.language_model.generation_config.pad_token_id

    def hook(module: Any, inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        step, seen["step"] = seen["step"], seen["step"] + 1
        if steps is None or step in steps:
            logits = logits.clone()
            logits[..., pad] += 12.0
        return logits

    handle = model.language_model.lm_head.register_forward_hook(hook)
    return handle, lambda: seen.update(step=0)


def _documented(host: Host, max_new_tokens: int) -> tuple[float, str]:
    """Score and finish reason from raw transformers: exp of the mean log-probability up to the first EOS."""
    processor, model = host.loaded.processor, host.loaded.model
    out = model.generate(**processor(images=IMAGE, text="", return_tensors="pt"), max_new_tokens=max_new_tokens,
                         do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, 1:]  # after T5's decoder start
    logp = torch.stack(out.logits, dim=1)[0].float().log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    eos = model.language_model.generation_config.eos_token_id
    ends = (tokens == eos).nonzero().flatten().tolist()
    kept = ends[0] + 1 if ends else len(tokens)
    return float(logp[:kept].mean().exp()), "stop" if ends else "length"


@pytest.mark.parametrize("steps", [set(), {1}, {0, 2, 3}, None], ids=["none", "second", "several", "all"])
def test_a_generated_pad_token_is_scored_like_any_other(tiny_t5, steps) -> None:
    with Host.load(str(tiny_t5), device="cpu", dtype="float32", retrieval=False) as host:
        pad = host.loaded.model.language_model.generation_config.pad_token_id
        assert pad == 0
        handle, reset = _favour_pad(host.loaded.model, steps)
        try:
            reset()
            ours = host.caption(IMAGE, max_new_tokens=6)
            reset()
            score, reason = _documented(host, 6)
        finally:
            handle.remove()
    assert ours.score == pytest.approx(score, rel=1e-5)
    assert ours.finish_reason == reason
    if steps is None:
        assert ours.text == "" and reason == "length"  # pads all along: an empty text that ran to its limit


def test_pads_filling_a_row_a_stop_string_ended_are_not_scored(tiny_t5) -> None:
    """In a batch, a row a stop string ends is filled with pads while the others go on: its score and
    finish reason are those it gets alone, and a pad the model generated earlier still counts."""
    images = [Image.new("RGB", (40, 40), colour) for colour in [(200, 30, 30), (30, 30, 200), (30, 200, 30), (250, 250, 250)]]
    with Host.load(str(tiny_t5), device="cpu", dtype="float32", retrieval=False) as host:
        handle, reset = _favour_pad(host.loaded.model, {1})
        try:
            def alone(**options: Any) -> list[Any]:
                done = []
                for image in images:
                    reset()
                    done.append(host.caption(image, max_new_tokens=8, **options))
                return done

            free = alone()
            row, stop = next((i, c) for i, r in enumerate(free) for c in r.raw_text[1:-1]
                             if sum(c in other.raw_text for other in free) == 1)
            each = alone(stop=stop)
            reset()
            together = host.caption(images, max_new_tokens=8, stop=stop)
        finally:
            handle.remove()
    assert [r.finish_reason for r in together] == [r.finish_reason for r in each]
    assert [r.finish_reason for r in each] == ["stop" if i == row else "length" for i in range(len(images))]
    assert [r.score for r in together] == pytest.approx([r.score for r in each], rel=1e-5)
