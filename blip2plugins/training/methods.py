"""Training methods: which parameters of a BLIP-2 model a run updates.

A method prepares the model in place (or wraps it) and returns the model to train. Only ``full``
exists so far; parameter-efficient methods (LoRA, Q-Former only) plug in here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Method = Callable[[torch.nn.Module, Any], torch.nn.Module]


def full(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """Train every parameter."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model


METHODS: dict[str, Method] = {"full": full}


def apply_method(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """The model to train for ``config.method``, with ``requires_grad`` set accordingly."""
    try:
        method = METHODS[config.method]
    except KeyError:
        raise ValueError(f"unknown training method {config.method!r}: expected one of {sorted(METHODS)}") from None
    return method(model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
