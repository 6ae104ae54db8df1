"""A model that does not fit the machine's free memory is refused before loading, with what would fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from blip2plugins import memory
from blip2plugins.errors import ModelLoadError
from blip2plugins.host import Host

#: The published blip2-opt-2.7b's language model (its vision and Q-Former parts are the defaults).
OPT_2_7B = Blip2Config(num_query_tokens=32, text_config=dict(
    model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
    vocab_size=50304, word_embed_proj_dim=2560))


def test_the_estimate_counts_the_real_size_parameters_at_the_loads_precision() -> None:
    params, fp32 = memory.weight_bytes(OPT_2_7B, Blip2ForConditionalGeneration, torch.float32, None)
    assert params == 3_744_761_856  # what benchmarks/real_size.py built from the published config
    assert fp32 == params * 4
    assert memory.weight_bytes(OPT_2_7B, Blip2ForConditionalGeneration, torch.bfloat16, None)[1] == params * 2
    eight = memory.weight_bytes(OPT_2_7B, Blip2ForConditionalGeneration, torch.float32, "8bit")[1]
    four = memory.weight_bytes(OPT_2_7B, Blip2ForConditionalGeneration, torch.float32, "4bit")[1]
    assert 1.0 * params < eight < 1.5 * params and four < 0.8 * params


def test_a_model_that_does_not_fit_is_refused_with_what_would(tiny_opt, monkeypatch) -> None:
    built = []
    monkeypatch.setattr(Blip2ForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, *a, **k: built.append(1)))
    params, fp32 = memory.weight_bytes(Blip2Config.from_pretrained(tiny_opt), Blip2ForConditionalGeneration,
                                       torch.float32, None)
    need = memory.needed_bytes(fp32, None)
    free = need - 1
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)
    with pytest.raises(ModelLoadError) as caught:
        Host.load(str(tiny_opt), device="cpu", dtype="float32", retrieval=False)
    text = str(caught.value)
    assert text.startswith(f"model 'tiny-opt0' needs about {need / 1e9:.1f} GB of memory in float32 "
                           f"({params / 1e9:.2f} B parameters), and this machine has {free / 1e9:.1f} GB free: "
                           "--dtype bfloat16 needs about")
    assert "--quantize 8bit needs about" in text and text.endswith("(set BLIP2_SKIP_MEMORY_CHECK=1 to load anyway)")
    assert not built  # refused before transformers read a weight


def test_the_check_can_be_skipped(tiny_opt, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1.0)
    with pytest.raises(ModelLoadError, match="needs about"):
        Host.load(str(tiny_opt), device="cpu", retrieval=False)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    with Host.load(str(tiny_opt), device="cpu", retrieval=False) as host:
        assert host.caption(Path(__file__).parent.parent / "examples" / "images" / "green-triangle_on-gray.png").ok


def test_a_retrieval_model_is_checked_too(tiny_retrieval, monkeypatch) -> None:
    config = Blip2Config.from_pretrained(tiny_retrieval)
    _, weights = memory.weight_bytes(config, Blip2ForImageTextRetrieval, torch.float32, None)
    monkeypatch.setattr(memory, "available_bytes", lambda device: weights)
    with pytest.raises(ModelLoadError, match=f"model '{tiny_retrieval.name}' needs about"):
        Host.load(str(tiny_retrieval), device="cpu")


def test_free_memory_is_read_from_the_machine() -> None:
    free = memory.available_bytes(torch.device("cpu"))
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        assert free is None
        return
    available = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    assert 0 < free <= available * 1.05
