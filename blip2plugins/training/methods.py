"""Training methods: which parameters of a BLIP-2 model a run updates.

* ``full``: every parameter.
* ``qformer``: the Q-Former, its query tokens and the language projection; the vision encoder and
  the language model stay frozen.
* ``lora``: low-rank adapters (peft) on the language model's attention projections, chosen by the
  family's preset (OPT ``q_proj k_proj v_proj out_proj``, FlanT5 ``q k v o``; the MLP layers with
  ``lora_mlp``). Targets are matched by a regex anchored in ``language_model.``, since the plain
  names also occur in the vision encoder and the Q-Former. ``lora_extra`` adds full-name regexes
  (e.g. ``qformer\\..*\\.(query|value)``) and ``lora_modules_to_save`` trains whole modules besides.

``apply_method(model, config)`` returns the model to train (a ``peft.PeftModel`` for LoRA) and is
idempotent, so a caller can prepare the model, train it and save it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

from .. import quiet
from ..families import Family, family_of

Method = Callable[[torch.nn.Module, Any], torch.nn.Module]
#: Parameter-name prefixes that the ``qformer`` method trains.
QFORMER_PREFIXES: tuple[str, ...] = ("qformer.", "query_tokens", "language_projection.")


def full(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """Train every parameter."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def qformer(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """Train the Q-Former, the query tokens and the language projection only."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(QFORMER_PREFIXES))
    return model


def lora_target_regex(family: Family, *, mlp: bool = False, targets: tuple[str, ...] | None = None,
                      extra: tuple[str, ...] = ()) -> str:
    """The peft ``target_modules`` regex: the family's (or given) names inside the language model, plus ``extra``."""
    names = tuple(targets or family.lora_targets) + (family.lora_mlp_targets if mlp else ())
    patterns = [rf"language_model\..*\.({'|'.join(map(re.escape, names))})", *extra]
    return "|".join(f"(?:{p})" for p in patterns)


def lora(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """Wrap ``model`` in LoRA adapters (peft); only the adapters (and ``lora_modules_to_save``) train."""
    with quiet.peft():
        from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    family = family_of(model.config.text_config.model_type)
    regex = lora_target_regex(family, mlp=config.lora_mlp, targets=config.lora_targets, extra=tuple(config.lora_extra))
    lora_config = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=regex, modules_to_save=list(config.lora_modules_to_save) or None, bias="none",
        trainable_token_indices=_token_rows(model, config.lora_token_ids),
    )
    with torch.random.fork_rng(devices=[]):  # the adapters' initial weights depend on the seed alone
        torch.manual_seed(config.seed)
        try:
            with quiet.peft():
                return get_peft_model(model, lora_config)
        except ValueError as exc:  # no module matched
            raise ValueError(f"LoRA targets {regex!r} match nothing in this model: {exc}") from None


def _token_rows(model: torch.nn.Module, token_ids: tuple[int, ...]) -> dict[str, list[int]] | None:
    """peft's ``trainable_token_indices``: the rows of ``token_ids`` in the language model's input
    embeddings and its output layer.

    Both are named: peft ties the output layer only when the top-level model declares tied weights,
    which ``Blip2ForConditionalGeneration`` does not, so otherwise the output rows of a new word
    would never change and the model could read the word but never say it.
    """
    if not token_ids:
        return None
    names = {module: name for name, module in model.named_modules()}
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    return {names[layer]: sorted(set(token_ids)) for layer in layers if layer is not None}


METHODS: dict[str, Method] = {"full": full, "qformer": qformer, "lora": lora}


def apply_method(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """The model to train for ``config.method``, with ``requires_grad`` set accordingly; parameters
    whose names start with one of ``config.freeze`` (if any) stay frozen."""
    try:
        method = METHODS[config.method]
    except KeyError:
        raise ValueError(f"unknown training method {config.method!r}: expected one of {sorted(METHODS)}") from None
    model = method(model, config)
    frozen = tuple(getattr(config, "freeze", ()))
    if frozen:
        for name, param in model.named_parameters():
            if name.startswith(frozen):
                param.requires_grad_(False)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
