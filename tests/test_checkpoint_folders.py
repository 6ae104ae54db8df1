"""A folder that is not a whole BLIP-2 checkpoint is refused in one line naming it, before any model is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from blip2plugins.errors import ModelLoadError
from blip2plugins.host import Host


def _config(folder: Path, **changes: object) -> None:
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **changes}))


def _only_text_config(folder: Path) -> None:
    """An OPT language model's config.json, with the BLIP-2 processor files left beside it."""
    text = json.loads((folder / "config.json").read_text())["text_config"]
    (folder / "config.json").write_text(json.dumps({**text, "model_type": "opt", "architectures": ["OPTForCausalLM"]}))


def _cut(folder: Path, keep: int | None = None) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _remove(*names: str) -> Callable[[Path], None]:
    return lambda folder: [(folder / name).unlink() for name in names]


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _language_weights_only(folder: Path) -> None:
    """BLIP-2 config and processor over weights that hold only a language model."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k.startswith("language_model.")}, folder / "model.safetensors")


CASES = [
    (_clear, "the folder is empty"),
    (_remove("config.json"), r"no config.json: not a BLIP-2 checkpoint folder \(it holds generation_config.json, "
                             r"model.safetensors"),
    (_only_text_config, r"not a BLIP-2 checkpoint: its config.json is for model type 'opt' \(OPTForCausalLM\): a "
                        "language model alone"),
    (lambda f: (f / "config.json").write_text('{"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]}'),
     "model type 'blip' .*: a BLIP-1 checkpoint"),
    (lambda f: (f / "config.json").write_text('{"model_type": "vit"}'), "model type 'vit': a vision encoder alone"),
    (lambda f: (f / "config.json").write_text('{"hidden_size": 8}'), "not a BLIP-2 checkpoint: its config.json is for a "
                                                                      "model without a model_type"),
    (_remove("model.safetensors"), "no weights: expected model.safetensors, pytorch_model.bin or a sharded index"),
    (_cut, r"model.safetensors is damaged or cut short \(.*\): download or save it again"),
    (lambda f: _cut(f, keep=5), r"model.safetensors is damaged or cut short \(.*header too small\)"),
    (_remove("tokenizer.json", "tokenizer_config.json"), "no tokenizer files"),
    (_remove("processor_config.json"), r"no image processor settings \(preprocessor_config.json or processor_config.json\)"),
    (lambda f: _config(f, num_query_tokens=2), r"the weights do not have the sizes config.json gives \(query_tokens: "
                                              r"\[1, 4, 32\] in the weights, \[1, 2, 32\] from config.json\)"),
    (_language_weights_only, r"the weights hold no vision encoder \(vision_model.\*\) and no Q-Former"),
]


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if transformers is asked to build a model or a processor."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model or processor was built before the folder was refused")

    monkeypatch.setattr(Blip2ForConditionalGeneration, "from_pretrained", refuse)
    monkeypatch.setattr(Blip2Processor, "from_pretrained", refuse)


@pytest.mark.parametrize("damage, message", CASES)
def test_a_folder_that_is_no_whole_blip2_checkpoint_is_refused_before_building(tiny_opt, tmp_path, nothing_built,
                                                                                 damage, message) -> None:
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_opt, folder)
    damage(folder)
    with pytest.raises(ModelLoadError, match=message) as caught:
        Host.load(str(folder), device="cpu", retrieval=False)
    text = str(caught.value)
    assert text.startswith(f"could not load model 'checkpoint' from {folder}: ")
    assert "\n" not in text and len(text) < 400


def test_a_sharded_checkpoint_loads_and_a_missing_shard_is_named(tiny_opt, tmp_path) -> None:
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_opt)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="100KB")
    for path in tiny_opt.iterdir():
        if "safetensors" not in path.name and not (folder / path.name).exists():
            shutil.copy(path, folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    with Host.load(str(folder), device="cpu", retrieval=False) as host, Host.load(str(tiny_opt), device="cpu",
                                                                                  retrieval=False) as whole:
        image = Image.new("RGB", (40, 40), "red")
        assert host.caption(image).raw_text == whole.caption(image).raw_text
    shards[-1].unlink()
    with pytest.raises(ModelLoadError, match=f"{shards[-1].name}, named by model.safetensors.index.json, is missing"):
        Host.load(str(folder), device="cpu", retrieval=False)
