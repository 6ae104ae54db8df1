"""The libraries' chatter stays off stderr unless asked for (``blip2 -v``, ``BLIP2_LOG``), and
bitsandbytes loads only for quantized models."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import ROOT, blip2

IMAGES = sorted(str(p) for p in (ROOT / "examples" / "images").glob("*.png"))
DEMO_NOTICE = "blip2: note: using the bundled demo model"
CHATTER = ("Loading weights", "Warning", "warnings.warn", "bitsandbytes", "gemm_4bit", "peft_config")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quiet") / "data.jsonl"
    path.write_text("".join(json.dumps({"image": image, "caption": Path(image).stem.split("_on-")[0]}) + "\n"
                            for image in IMAGES[:3]))
    return path


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A LoRA adapter from a 2-step ``blip2 train --out``, and what that run printed on stderr."""
    out = tmp_path_factory.mktemp("quiet") / "adapter"
    result = blip2("train", "--data", str(data), "--steps", "2", "--out", str(out), BLIP2_LOG="")
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def test_caption_prints_only_the_demo_notice():
    result = blip2("caption", *IMAGES, BLIP2_LOG="")
    assert result.returncode == 0, result.stderr
    notice, = result.stderr.splitlines()
    assert notice.startswith(DEMO_NOTICE)


def test_train_prints_only_its_own_lines(trained):
    _, stderr = trained
    assert "training (lora):" in stderr
    assert not [line for line in stderr.splitlines() if any(word in line for word in CHATTER)], stderr


def test_caption_with_an_adapter_prints_only_the_demo_notice(trained):
    adapter, _ = trained
    result = blip2("caption", "--adapter", str(adapter), *IMAGES, BLIP2_LOG="")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith(DEMO_NOTICE)] == []


def test_loading_and_attaching_an_adapter_leaves_bitsandbytes_unimported(trained):
    adapter, _ = trained
    script = ("import sys; from blip2plugins import models; loaded = models.load('demo', device='cpu'); "
              f"models.attach_adapter(loaded, {str(adapter)!r}); print('peft' in sys.modules, 'bitsandbytes' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
    assert result.stderr == ""


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes extra not installed")
def test_a_quantized_model_loaded_after_a_plain_one_gets_quantized_lora_layers(trained):
    adapter, _ = trained
    script = ("from blip2plugins import models\n"
              "for quantize in (None, '8bit'):\n"
              "    loaded = models.load('demo', device='cpu', quantize=quantize, retrieval=False)\n"
              f"    models.attach_adapter(loaded, {str(adapter)!r})\n"
              "print(sorted({type(m).__module__ for m in loaded.model.modules() if 'lora' in type(m).__module__}))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['peft.tuners.lora.bnb']"
    assert result.stderr == ""


@pytest.mark.parametrize("switch, env", [(["-v"], {}), ([], {"BLIP2_LOG": "info"})])
def test_verbose_brings_the_library_output_back(data, tmp_path, switch, env):
    result = blip2(*switch, "train", "--data", str(data), "--steps", "1", "--out", str(tmp_path / "a"),
                   **{"BLIP2_LOG": "", **env})
    assert result.returncode == 0, result.stderr
    assert "Loading weights" in result.stderr
