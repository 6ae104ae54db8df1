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

from . import jsonfile, quiet
from .errors import ModelLoadError

PEFT_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"
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
    _trainable: dict[str, bool] = field(default_factory=dict, repr=False)

    def detach(self) -> None:
        """Remove the LoRA adapter, or put the base parameters back."""
        if self.kind == "lora":
            for layer in _lora_layers(self.model):
                layer.delete_adapter(self.name)
            _unwrap(self.model)
            configs = getattr(self.model, "peft_config", {})
            configs.pop(self.name, None)
            if not configs and hasattr(self.model, "peft_config"):  # as loaded: no trace of peft
                del self.model.peft_config
                self.model._hf_peft_config_loaded = False
            for key, param in self.model.named_parameters():  # peft froze them: batched results differ
                param.requires_grad_(self._trainable.get(key, param.requires_grad))
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, value in self._saved.items():
                params[key].copy_(value)
        self._saved.clear()


def _lora_layers(model: torch.nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def _unwrap(model: torch.nn.Module) -> None:
    """Put back the plain modules peft wrapped: those of LoRA layers left without adapters (the empty
    wrappers alone change batched results in their last bits), and those wrapped for trained token
    rows or ``modules_to_save`` (left with stale state, they make the next attach fail)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            _replace(model, name, module.unload_and_optionally_merge_module(merge=False, safe_merge=False,
                                                                            adapter_names=None))
    for name, module in list(model.named_modules()):  # listed again: the loop above replaced modules
        if isinstance(module, BaseTunerLayer) and not any(getattr(module, attr) for attr in module.adapter_layer_names):
            _replace(model, name, module.get_base_layer())


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


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
        config = _peft_config(path)
    except ModelLoadError:  # attach reports it
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
    """Attach the artifact in ``folder`` to ``model`` (a ``Blip2ForConditionalGeneration``) and activate it.

    All or nothing: when it fails (:class:`ModelLoadError`, one line), the model is left exactly as it was.
    """
    path = Path(folder).expanduser()
    kind = kind_of(path)
    attached = Attached(model, path, kind, name or path.name)
    if kind == "lora":
        _attach_lora(attached, str(folder))
        return attached
    weights = _read_tensors(path / WEIGHTS, str(folder))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: no parameter {unknown[0]!r}"
                             + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for key, value in weights.items():
        if tuple(value.shape) != tuple(params[key].shape):
            raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: {key} has shape "
                                 f"{tuple(value.shape)}, the model's is {tuple(params[key].shape)}")
    with torch.no_grad():
        attached._saved.update((key, params[key].detach().clone()) for key in weights)
        try:
            for key, value in weights.items():
                params[key].copy_(value.to(params[key].dtype))
        except BaseException as exc:
            attached.detach()  # put back what was already copied
            if not isinstance(exc, Exception):
                raise
            raise ModelLoadError(f"adapter {str(folder)!r} does not fit this model: {_one_line(exc)}") from None
    return attached


def _attach_lora(attached: Attached, shown: str) -> None:
    """Load and activate a PEFT LoRA folder; on any failure, take out what peft had injected."""
    model, name = attached.model, attached.name
    if name in getattr(model, "peft_config", {}):
        raise ModelLoadError(f"adapter {shown!r}: an adapter named {name!r} is already attached")
    _peft_config(attached.folder)
    weights = attached.folder / LORA_WEIGHTS
    attached._trainable = {key: param.requires_grad for key, param in model.named_parameters()}
    shapes = _tensor_shapes(weights, shown) if weights.is_file() else {}
    try:
        with quiet.peft():
            model.load_adapter(str(attached.folder), adapter_name=name)
        for layer in _lora_layers(model):  # transformers' set_adapter needs a newer peft
            layer.set_adapter(name)
    except BaseException as exc:
        reason = _misfit(model, name, shapes) or _one_line(exc)
        attached.detach()
        if not isinstance(exc, Exception):
            raise
        raise ModelLoadError(f"adapter {shown!r} does not fit this model: {reason}") from None


def _one_line(exc: BaseException) -> str:
    """An error's message on one line, cut to 300 characters (peft and transformers quote what they refuse)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else f"{text[:300]}..."


def _peft_config(folder: Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json``, read with the project's careful JSON reader."""
    path = folder / PEFT_CONFIG
    try:
        config = jsonfile.load_file(path)
    except FileNotFoundError:
        raise ModelLoadError(f"adapter {str(folder)!r}: {path}: missing") from None
    except jsonfile.JSONReadError as exc:
        raise ModelLoadError(f"adapter {str(folder)!r}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"adapter {str(folder)!r}: {path}: not a JSON object")
    return config


def _read_tensors(path: Path, shown: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise ModelLoadError(f"adapter {shown!r}: cannot read {path.name}: {_one_line(exc)}") from None


def _tensor_shapes(path: Path, shown: str) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from the file's header: a truncated or corrupt file is refused here."""
    try:
        with safe_open(str(path), "pt") as tensors:
            return {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise ModelLoadError(f"adapter {shown!r}: cannot read {path.name}: {_one_line(exc)}") from None


def _misfit(model: torch.nn.Module, name: str, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The first LoRA tensor whose stored shape is not the one peft made for it, said plainly
    (transformers only prints a table of them)."""
    for key, param in model.named_parameters():
        parts = key.split(".")
        if name in parts:
            parts.remove(name)
            stored = shapes.get(f"base_model.model.{'.'.join(parts)}")
            if stored is not None and stored != tuple(param.shape):
                return f"{'.'.join(parts)} has shape {stored}, the model's is {tuple(param.shape)}"
    return None
