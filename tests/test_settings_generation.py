"""Generation settings at their edges: refused with a reason before any model loads, or safe to run."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner
from PIL import Image

from blip2plugins.cli import build_cli
from blip2plugins.errors import OptionError
from blip2plugins.generation import (
    MAX_LENGTH_PENALTY,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    GenerationOptions,
)
from blip2plugins.host import Host


@pytest.mark.parametrize("options, message", [
    ({"do_sample": True, "temperature": 1e-300}, r"temperature must be a finite number between 0.001 and 100, got 1e-300 \(lower "
                                                 r"temperatures sample like greedy search, and logits divided by them overflow float32\)"),
    ({"do_sample": True, "temperature": 1e-38}, "temperature must be a finite number between 0.001 and 100"),
    ({"do_sample": True, "temperature": math.nan}, "temperature must be a finite number between 0.001 and 100, got nan$"),
    ({"repetition_penalty": 1e-300}, r"repetition_penalty must be a finite number between 0.5 and 100, got 1e-300 \(1 is none"),
    ({"repetition_penalty": 0.1}, "repetition_penalty must be a finite number between 0.5 and 100, got 0.1"),
    ({"repetition_penalty": math.inf}, "repetition_penalty must be a finite number between 0.5 and 100, got inf$"),
    ({"num_beams": 2, "length_penalty": 1e308}, "length_penalty must be a finite number between -10 and 10, got 1e[+]308$"),
    ({"num_beams": 2, "length_penalty": -1e308}, "length_penalty must be a finite number between -10 and 10"),
    ({"do_sample": True, "temperature": 10**5000}, "temperature must be a finite number, got an int of 16,610 bits"),
    ({"length_penalty": 2**1100}, "length_penalty must be a finite number, got an int of 1,101 bits"),
    ({"max_new_tokens": 10**5000}, "max_new_tokens must be a whole number of at most 256 bits, got one of 16,610 bits"),
    ({"do_sample": True, "seed": -(10**5000)}, "seed must be a whole number of at most 256 bits"),
    ({"do_sample": True, "top_p": "x" * 10**6}, r"top_p must be float, got str 'x+\.\.\. \(1,000,002 characters\)$"),
    ({"max_new_tokens": 4097}, "max_new_tokens must be <= 4096, got 4097"),
    ({"stop": [10**5000]}, "stop must be a non-empty string or a list of non-empty strings, got a list holding an integer of thousands of digits$"),
])
def test_settings_that_would_fail_or_empty_the_batch_are_refused(options, message) -> None:
    with pytest.raises(OptionError, match=message):
        GenerationOptions.from_kwargs(options)


def test_the_edges_of_the_ranges_generate_texts() -> None:
    image = Image.new("RGB", (32, 32), "red")
    with Host.load("demo", device="cpu") as host:
        results = [host.caption(image, do_sample=True, temperature=MIN_TEMPERATURE, seed=1),
                   host.caption(image, repetition_penalty=MIN_REPETITION_PENALTY),
                   host.caption(image, num_beams=2, length_penalty=MAX_LENGTH_PENALTY),
                   host.caption(image, num_beams=2, length_penalty=-MAX_LENGTH_PENALTY)]
    assert all(result.ok and result.text for result in results), results


@pytest.mark.parametrize("args, flag", [
    (["--sample", "--temperature", "1e-300"], "--temperature"),
    (["--repetition-penalty", "1e-300"], "--repetition-penalty"),
    (["--sample", "--top-k", "-1"], "--top-k"),
    (["--beams", "1000000000"], "--beams"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--sample", "--seed", str(2**70)], "--seed"),
    (["--beams", "9" * 5000], "--beams"),
    (["--sample", "--temperature", "x" * 5000], "--temperature"),
    (["-n", "9" * 5000], "--num-captions"),
])
def test_the_command_refuses_them_before_loading_the_model(tmp_path, monkeypatch, args, flag) -> None:
    monkeypatch.setattr("blip2plugins.cli_options.load_host", lambda *a, **k: pytest.fail("loaded the model"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(build_cli(), ["caption", "--model", "demo", str(tmp_path / "a.png"), *args])
    assert result.exit_code == 2 and f"'{flag}'" in result.output and "Invalid value for" in result.output, result.output
    assert len(result.output.splitlines()[-1]) < 300


def test_sampling_follows_the_checkpoints_generation_config_unless_told() -> None:
    """Left unset, temperature / top_p / top_k are the checkpoint's, as in transformers' generate."""
    import torch

    from blip2plugins.demo import world

    image = world.render(world.make_scene({"circle": "red", "square": "blue"}))
    hot = {"do_sample": True, "temperature": 5.0, "max_new_tokens": 8}  # flat enough for top_k to matter
    with Host.load("demo") as host:
        assert not {"temperature", "top_p", "top_k"} & set(host.options(do_sample=True).generate_kwargs())
        ours = [host.caption(image, seed=seed, **hot).raw_text for seed in range(8)]
        everything = [host.caption(image, seed=seed, top_k=0, **hot).raw_text for seed in range(8)]
        processor, model = host.loaded.processor, host.loaded.model
        inputs = processor(images=image, text="", return_tensors="pt")
        raw = []
        for seed in range(8):
            torch.manual_seed(seed)
            out = model.generate(**inputs, **hot)
            raw.append(processor.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)[0].strip())
    assert ours == raw  # transformers' default top_k (50), since the checkpoint sets none
    assert everything != ours  # and top_k=0 (all tokens), when asked for, is something else
