"""What a BLIP-2 checkpoint folder must hold, checked from its files before any model is built.

transformers reads a folder leniently: without ``config.json`` it builds a default-size BLIP-2 (5 GB)
before failing, it turns an OPT or BLIP-1 config into a random BLIP-2, and without tokenizer files it
falls back to another tokenizer. These checks read only the file list, ``config.json`` and the
safetensors headers, so a wrong folder is refused in one line, within seconds, with nothing allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors import SafetensorError, safe_open
from transformers import Blip2Config, PreTrainedModel

from .errors import ModelLoadError
from .jsonfile import JSONReadError, load_file

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZERS = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
PROCESSORS = ("preprocessor_config.json", "processor_config.json")
_PARTS = {"vision_model.": "vision encoder (vision_model.*)", "qformer.": "Q-Former (qformer.*)", "query_tokens": "query_tokens"}
_HINTS = {
    "blip": "a BLIP-1 checkpoint; BLIP-2 checkpoints are named like Salesforce/blip2-opt-2.7b",
    "opt": "a language model alone", "t5": "a language model alone",
    "vit": "a vision encoder alone", "clip": "a CLIP model",
}


def check_folder(name: str, folder: Path) -> None:
    """Refuse ``folder`` when it is empty or has no ``config.json``."""
    files = sorted(path.name for path in folder.iterdir())
    if not files:
        _refuse(name, folder, "the folder is empty; a BLIP-2 checkpoint holds config.json, its weights and "
                              "its processor's files")
    if "config.json" not in files:
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        _refuse(name, folder, f"no config.json: not a BLIP-2 checkpoint folder (it holds {shown})")


def check_type(name: str, source: str, raw: dict[str, Any]) -> None:
    """Refuse a ``config.json`` that describes another kind of model than BLIP-2."""
    kind = raw.get("model_type")
    if kind == Blip2Config.model_type:
        return
    architectures = raw.get("architectures")
    what = f"model type {kind!r}" if kind else "a model without a model_type"
    if isinstance(architectures, list) and architectures and all(isinstance(a, str) for a in architectures):
        what += f" ({', '.join(architectures)})"
    hint = _HINTS.get(kind) if isinstance(kind, str) else None
    _refuse(name, source, f"not a BLIP-2 checkpoint: its config.json is for {what}" + (f": {hint}" if hint else ""))


def check_contents(name: str, folder: Path, config: Blip2Config, model_class: type[PreTrainedModel]) -> None:
    """Refuse ``folder`` unless it holds weights, a tokenizer and an image processor, and its
    safetensors weights are whole, hold a BLIP-2's parts, and have the sizes ``config`` gives
    ``model_class`` (built on the meta device to compare, so nothing is allocated). Weights stored as
    ``pytorch_model.bin`` are left to transformers."""
    files = {path.name for path in folder.iterdir()}
    if not files & set(WEIGHTS):
        _refuse(name, folder, f"no weights: expected {WEIGHTS[0]}, {WEIGHTS[2]} or a sharded index")
    if not files & set(TOKENIZERS):
        _refuse(name, folder, f"no tokenizer files (one of {', '.join(TOKENIZERS)}): copy them from the checkpoint "
                              "these weights came from")
    if not files & set(PROCESSORS):
        _refuse(name, folder, f"no image processor settings ({' or '.join(PROCESSORS)}): copy them from the "
                              "checkpoint these weights came from")
    shapes = _shapes(name, folder)
    if shapes is None:
        return
    missing = [part for prefix, part in _PARTS.items() if not any(key.startswith(prefix) for key in shapes)]
    if missing:
        _refuse(name, folder, f"the weights hold no {' and no '.join(missing)}: not a BLIP-2 checkpoint's weights")
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in model_class(config).state_dict().items()}
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            _refuse(name, folder, f"the weights do not have the sizes config.json gives ({key}: {list(shape)} in the "
                                  f"weights, {list(expected[key])} from config.json)")


def _shapes(name: str, folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape from the safetensors headers (no data is read), or None for .bin weights."""
    if (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    elif (folder / "model.safetensors.index.json").is_file():
        shards = _index_shards(name, folder / "model.safetensors.index.json")
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        path = folder / shard
        if not path.is_file():
            _refuse(name, folder, f"{shard}, named by model.safetensors.index.json, is missing")
        try:
            with safe_open(path, framework="pt") as weights:
                for key in weights.keys():
                    shapes[key] = tuple(weights.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            reason = " ".join(str(exc).split())
            _refuse(name, folder, f"{shard} is damaged or cut short ({reason}): download or save it again")
    return shapes


def _index_shards(name: str, index: Path) -> list[str]:
    try:
        raw = load_file(index)
    except JSONReadError as exc:
        _refuse(name, index.parent, str(exc))
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        _refuse(name, index.parent, f"{index.name} has no weight_map of tensor names to shard files")
    shards = sorted(set(weight_map.values()))
    if any(Path(shard).name != shard for shard in shards):
        _refuse(name, index.parent, f"{index.name} names shards outside the folder")
    return shards


def _refuse(name: str, where: Path | str, reason: str) -> NoReturn:
    raise ModelLoadError(f"could not load model {name!r} from {where}: {reason}")

