"""Loading options: dtypes, quantization, LoRA adapters, device checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from blip2plugins.errors import ModelLoadError, OptionError
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
    with pytest.raises(ModelLoadError, match="input width to be a multiple of 64 .*; its vision_model has layers 32 wide; "
                                             "its language_projection has layers 32 wide; its language_model has layers 32"):
        Host.load(str(tiny_opt), device="cpu", quantize="4bit")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_4bit_on_cpu_checks_the_vision_encoder_too(tmp_path):
    """transformers quantizes the vision encoder as well: a width only it has is refused at load, not per item."""
    from transformers import Blip2ForConditionalGeneration

    from blip2plugins.building import ModelSpec, build

    model, processor = build(["a red circle", "a blue square"] * 20, "opt", ModelSpec(hidden=64), seed=0)
    config = model.config
    config.vision_config.hidden_size = config.qformer_config.encoder_hidden_size = 48
    config.vision_config.intermediate_size = 96
    Blip2ForConditionalGeneration(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="its vision_model has layers 48, 96, 144 wide: use quantize='8bit'$") as caught:
        Host.load(str(tmp_path), device="cpu", quantize="4bit", retrieval=False)
    assert "language" not in str(caught.value)
    with Host.load(str(tmp_path), device="cpu", quantize="8bit", retrieval=False) as host:
        assert host.caption(IMAGE, max_new_tokens=4).ok


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_4bit_runs_on_cpu_where_widths_fit(tmp_path):
    from blip2plugins.building import ModelSpec, build

    model, processor = build(["a red circle", "a blue square"] * 20, "opt", ModelSpec(hidden=64), seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with Host.load(str(tmp_path), device="cpu", quantize="4bit", retrieval=False) as host:
        assert host.ask(IMAGE, "how many shapes?").ok


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_the_demo_model_quantizes_to_8bit_on_cpu_and_says_why_not_4bit():
    with pytest.raises(ModelLoadError, match="its vision_model has layers 96 wide: use quantize='8bit'$"):
        Host.load("demo", device="cpu", quantize="4bit", retrieval=False)
    with Host.load("demo", device="cpu", quantize="8bit") as host:
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


def _damaged_demo(tmp_path: Path, edit) -> str:
    import json
    import shutil

    from blip2plugins.demo import MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("retrieval"))
    config = folder / "config.json"
    if isinstance(edit, str):
        config.write_text(edit)
    else:
        raw = json.loads(config.read_text())
        for key, value in edit.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        config.write_text(json.dumps(raw))
    return str(folder)


@pytest.mark.parametrize("edit, message", [
    ({"vision_config": "nope"}, "Field 'vision_config' with value 'nope' doesn't match any type"),
    ({"num_query_tokens": "8"}, "Field 'num_query_tokens' expected int, got str"),
    ({"vision_config": {"patch_size": 0}}, "config.json: vision_config.patch_size must be >= 1, got 0"),
    ({"vision_config": {"image_size": 0}}, "config.json: vision_config.image_size must be >= 1, got 0"),
    ({"vision_config": {"hidden_size": -64}}, "config.json: vision_config.hidden_size must be >= 1, got -64"),
    ({"vision_config": {"hidden_size": 63}}, r"vision_config.hidden_size \(63\) is not a multiple of num_attention_heads"),
    ({"num_query_tokens": 0}, "config.json: num_query_tokens must be >= 1, got 0"),
    ({"text_config": {"vocab_size": 0}}, "config.json: text_config.vocab_size must be >= 1, got 0"),
    ({"vision_config": {"patch_size": 16}}, r"the weights do not have the sizes config.json gives \(vision_model\.embeddings\."),
    ("[" * 100_000 + "]" * 100_000, r"config.json: nested more than 64 levels deep"),
    ('{"num_query_tokens": ' + "9" * 5000 + "}", "config.json: a number of 5,000 digits"),
    ("[1, 2]", "config.json is not a JSON object"),
])
def test_a_bad_config_json_is_one_line_naming_the_folder(tmp_path, capfd, edit, message) -> None:
    folder = _damaged_demo(tmp_path, edit)
    with pytest.raises(ModelLoadError, match=message) as caught:
        Host.load(folder, device="cpu", retrieval=False)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 600 and "model 'model'" in text
    assert folder in text or "config.json" in text
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers' multi-line report is held back


def test_a_model_name_the_file_system_refuses_is_one_short_line() -> None:
    with pytest.raises(ModelLoadError, match="File name too long$") as caught:
        Host.load("x" * 5000, device="cpu")
    assert len(str(caught.value)) < 300


def test_batch_invariant_results_do_not_depend_on_batch_mates(tiny_t5):
    """In bfloat16 a row's scores move with the padding its batch-mates' longer prompts bring (3 to 9 of
    16 here); batch_invariant runs each request alone, and its results equal one-by-one runs exactly."""
    from concurrent.futures import ThreadPoolExecutor

    words = "a red circle and a blue square on a gray background the dog runs".split()
    items = [(Image.new("RGB", (40 + 3 * i, 40), (15 * i, 255 - 15 * i, 90)), " ".join(words[: 3 * i % 14]))
             for i in range(16)]
    with Host.load(str(tiny_t5), dtype="bfloat16", retrieval=False, batch_invariant=True) as host:
        alone = [host.caption(image, prompt=prompt, max_new_tokens=8) for image, prompt in items]
        with ThreadPoolExecutor(len(items)) as pool:  # concurrent callers: the host would batch them
            together = list(pool.map(lambda item: host.caption(item[0], prompt=item[1], max_new_tokens=8), items))
        assert host.stats()["largest_batch"] == 1
    assert [(r.raw_text, r.score) for r in together] == [(r.raw_text, r.score) for r in alone]


def test_batch_invariant_must_be_a_bool(tiny_opt):
    with pytest.raises(OptionError, match="batch_invariant must be True or False, got 'yes'"):
        Host.load(str(tiny_opt), batch_invariant="yes")
