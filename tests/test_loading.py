"""Loading options: dtypes, quantization, LoRA adapters, device checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from blip2plugins.errors import ModelLoadError
from blip2plugins.host import Host

IMAGE = Image.new("RGB", (40, 40), "red")


@pytest.fixture(scope="module")
def fp32(tiny_opt: Path):
    with Host.load(str(tiny_opt)) as host:
        yield host.caption(IMAGE, max_new_tokens=8)


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_half_precision_loads_and_captions(tiny_opt, fp32, dtype, torch_dtype):
    with Host.load(str(tiny_opt), dtype=dtype) as host:
        assert host.loaded.model.language_model.dtype == torch_dtype
        result = host.caption(IMAGE, max_new_tokens=8)
    assert result.ok and abs(result.score - fp32.score) < 0.05


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_8bit_quantization_runs_on_cpu(tiny_opt, fp32):
    with Host.load(str(tiny_opt), quantize="8bit") as host:
        assert any("8bit" in type(m).__name__ for m in host.loaded.model.modules())
        result = host.caption(IMAGE, max_new_tokens=8)
    assert result.text == fp32.text


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_4bit_on_cpu_refuses_layer_widths_its_kernels_cannot_pack(tiny_opt):
    with pytest.raises(ModelLoadError, match="multiples of 64.*32"):
        Host.load(str(tiny_opt), device="cpu", quantize="4bit")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_4bit_runs_on_cpu_where_widths_fit():
    with Host.load("demo", device="cpu", quantize="4bit") as host:
        assert host.ask(IMAGE, "how many shapes?").ok


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float64"}, "dtype 'float64'"),
    ({"quantize": "3bit"}, "quantize '3bit'"),
    ({"device": "cuda:0"}, "CUDA is not available") if not torch.cuda.is_available() else ({"device": "tpu"}, "tpu"),
    ({"device": "meta"}, "device 'meta': expected auto, cpu, cuda, cuda:N or mps"),
    ({"device": "mps"}, "MPS .* is not available") if not torch.backends.mps.is_available() else ({"device": "tpu"}, "tpu"),
    ({"adapter": "/nonexistent/adapter"}, "no such folder"),
])
def test_bad_load_options_are_clear_errors(tiny_opt, kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        Host.load(str(tiny_opt), **kwargs)


def test_lora_adapter_changes_output_and_model_version(tiny_opt, fp32, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Blip2ForConditionalGeneration

    base = Blip2ForConditionalGeneration.from_pretrained(tiny_opt)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    folder = tmp_path / "shapes-lora"
    peft_model.save_pretrained(folder)
    with Host.load(str(tiny_opt), adapter=str(folder)) as host:
        result = host.caption(IMAGE, max_new_tokens=8)
    assert result.model_version.startswith(f"{tiny_opt.name}+shapes-lora@")
    assert result.model_version != fp32.model_version
    assert (result.text, result.score) != (fp32.text, fp32.score)
