"""Training BLIP-2 models: a collator for ``(image, prompt, target)`` examples, training methods
(which parameters train) and an :mod:`accelerate`-based loop.

    from blip2plugins.training import Example, TrainConfig, train
    report = train(model, processor, [Example(image, "", "a red circle")], TrainConfig(steps=100))
"""

from __future__ import annotations

from .collate import IGNORE, Collator, Example
from .loop import TrainConfig, TrainReport, lr_factor, train
from .methods import METHODS, apply_method, count_parameters

__all__ = [
    "IGNORE", "METHODS", "Collator", "Example", "TrainConfig", "TrainReport", "apply_method",
    "count_parameters", "lr_factor", "train",
]
