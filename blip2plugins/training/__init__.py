"""Training BLIP-2 models: datasets, a collator, training methods (full, qformer, lora), an
:mod:`accelerate`-based loop, held-out metrics and :func:`finetune`, which ties them to the
adapter store.

    from blip2plugins.training import Example, TrainConfig, train
    report = train(model, processor, [Example(image, "", "a red circle")], TrainConfig(steps=100))

``finetune`` (in :mod:`blip2plugins.training.finetune`) is imported on demand: it loads the host.
"""

from __future__ import annotations

from .collate import IGNORE, Collator, Example
from .data import CaptionDataset, Problem, Record, read_dataset
from .loop import TrainConfig, TrainReport, latest_checkpoint, lr_factor, train
from .methods import METHODS, apply_method, count_parameters
from .metrics import caption_metrics, normalize, vqa_accuracy
from .plot import plot_curves

__all__ = [
    "IGNORE", "METHODS", "CaptionDataset", "Collator", "Example", "Problem", "Record", "TrainConfig",
    "TrainReport", "apply_method", "caption_metrics", "count_parameters", "latest_checkpoint", "lr_factor",
    "normalize", "plot_curves", "read_dataset", "train", "vqa_accuracy",
]
