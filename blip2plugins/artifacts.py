"""What a fine-tuning run saves, and how it attaches to (and detaches from) a loaded model.

Two kinds of artifact folder:

* **LoRA**: plain PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``), loadable
  without this project by ``PeftModel.from_pretrained(Blip2ForConditionalGeneration..., folder)``.
* **weights** (``qformer`` and ``full`` methods): ``weights.safetensors`` holding exactly the trained
  parameters by their names in ``Blip2ForConditionalGeneration``, and ``blip2_weights.json``
  (method, base model, parameter names). Loading copies them over the base model's parameters.

:func:`attach` puts an artifact on a model and returns an :class:`Attached` whose ``detach()``
restores the model exactly, which is how the host swaps adapters while serving.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import ModelLoadError

PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "weights.safetensors"
WEIGHTS_META = "blip2_weights.json"


def kind_of(folder: str | Path) -> str:
    """``"lora"`` or ``"weights"``; :class:`ModelLoadError` when the folder is neither."""
    path = Path(folder).expanduser()
    if (path / PEFT_CONFIG).is_file():
        return "lora"
    if (path / WEIGHTS_META).is_file() and (path / WEIGHTS).is_file():
        return "weights"
    raise ModelLoadError(f"adapter {str(folder)!r}: not an adapter folder (no {PEFT_CONFIG}, no {WEIGHTS_META} + {WEIGHTS})")


def save(model: torch.nn.Module, method: str, folder: str | Path, *, base_model: str) -> Path:
    """Save what ``method`` trained: the LoRA adapter of a ``PeftModel``, or the trained parameters."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            raise TypeError("method 'lora' saves a peft.PeftModel (prepare it with training.apply_method)")
        config = model.peft_config["default"]
        config.base_model_name_or_path = base_model
        # peft's default ("auto") asks the hub whether the base model's vocabulary differs: a network
        # call at every save. Training here never resizes the vocabulary, so embeddings are saved only
        # when the LoRA targets them.
        targeted = any(name in str(config.target_modules) for name in ("embed_tokens", "lm_head"))
        model.save_pretrained(str(out), save_embedding_layers=targeted)
        return out
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}
    if not tensors:
        raise ValueError(f"method {method!r}: the model has no trainable parameters to save")
    save_file(tensors, str(out / WEIGHTS))
    meta = {"format": 1, "method": method, "base_model": base_model, "parameters": sorted(tensors)}
    (out / WEIGHTS_META).write_text(json.dumps(meta, indent=1))
    return out


@dataclass
class Attached:
    """An artifact attached to a model; :meth:`detach` undoes it."""

    model: Any
    folder: Path
    kind: str
    name: str
    _saved: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def detach(self) -> None:
        """Remove the LoRA adapter, or put the base parameters back."""
        if self.kind == "lora":
            for layer in _lora_layers(self.model):
                layer.delete_adapter(self.name)
            _unwrap_auxiliary(self.model)
            getattr(self.model, "peft_config", {}).pop(self.name, None)
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, value in self._saved.items():
                params[key].copy_(value)
        self._saved.clear()


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _unwrap_auxiliary(model: torch.nn.Module) -> None:
    """Put back the modules peft wrapped for trained token rows or ``modules_to_save``: deleting the
    adapter from the LoRA layers leaves those wrappers with stale state, and the next attach fails."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.unload_and_optionally_merge_module(merge=False, safe_merge=False,
                                                                             adapter_names=None))


def touches(model: torch.nn.Module, folder: str | Path, prefix: str) -> bool:
    """Whether attaching the artifact in ``folder`` to ``model`` would change a module under ``prefix``
    (e.g. ``"vision_model"``): a trained parameter there, or a LoRA target or module to save there."""
    path = Path(folder).expanduser()
    if kind_of(path) != "lora":
        try:
            with safe_open(str(path / WEIGHTS), "pt") as weights:
                return any(key.startswith(prefix + ".") for key in weights.keys())
        except Exception:  # attach reports the unreadable file; assume the worst meanwhile
            return True
    try:
        config = json.loads((path / PEFT_CONFIG).read_text())
    except (OSError, ValueError):
        return True
    targets = config.get("target_modules") or []
    saved = config.get("modules_to_save") or []
    for name, _ in model.named_modules():
        if not name.startswith(prefix + "."):
            continue
        if isinstance(targets, str) and re.fullmatch(targets, name):
            return True
        if not isinstance(targets, str) and any(name == t or name.endswith("." + t) for t in targets):
            return True
        if any(name == m or name.endswith("." + m) for m in saved):
            return True
    return False


def attach(model: Any, folder: str | Path, *, name: str | None = None) -> Attached:
    """Attach the artifact in ``folder`` to ``model`` (a ``Blip2ForConditionalGeneration``) and activate it."""
    path = Path(folder).expanduser()
    kind = kind_of(path)
    name = name or path.name
    if kind == "lora":
        try:
            model.load_adapter(str(path), adapter_name=name)
            for layer in _lora_layers(model):  # transformers' set_adapter needs a newer peft
                layer.set_adapter(name)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: {exc}") from None
        return Attached(model, path, kind, name)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise ModelLoadError(f"adapter {str(folder)!r}: cannot read {WEIGHTS}: {exc}") from None
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: no parameter {unknown[0]!r}"
                             + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for key, value in weights.items():
        if tuple(value.shape) != tuple(params[key].shape):
            raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: {key} has shape "
                                 f"{tuple(value.shape)}, the model's is {tuple(params[key].shape)}")
    attached = Attached(model, path, kind, name)
    with torch.no_grad():
        for key, value in weights.items():
            attached._saved[key] = params[key].detach().clone()
            params[key].copy_(value.to(params[key].dtype))
    return attached
