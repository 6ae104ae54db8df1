"""The training loop: AdamW with warmup and a decaying schedule, on :class:`accelerate.Accelerator`.

Runs unchanged on one process or under ``accelerate launch`` (each process takes its shard of
every batch; ``steps`` counts optimizer steps). Seeded: the same seed, data and config give the
same weights.

    report = train(model, processor, examples, TrainConfig(steps=2000, lr=1e-3, batch_size=64))
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..families import Family, family_of
from .collate import Collator, Example
from .methods import apply_method, count_parameters


@dataclass
class TrainConfig:
    """How to train. ``warmup`` is a number of steps; ``schedule`` decays the rate after it."""

    method: str = "full"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    progress: bool = True  # a progress bar on stderr, when it is a terminal
    mixed_precision: str = "no"


@dataclass
class TrainReport:
    """What a run did: parameter counts, time, and the mean loss of every ``log_every`` steps."""

    method: str
    steps: int
    examples_seen: int
    trainable_params: int
    total_params: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)

    @property
    def first_loss(self) -> float:
        return self.losses[0][1] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1] if self.losses else math.nan


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def train(model: torch.nn.Module, processor: Any, examples: Sequence[Example], config: TrainConfig,
          *, family: Family | str | None = None) -> TrainReport:
    """Train ``model`` in place on ``examples`` (a sequence of :class:`Example`) and report.

    ``family`` defaults to the one of the model's language model. The model is left in eval mode.
    """
    if family is None:
        family = family_of(model.config.text_config.model_type)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    model = apply_method(model, config)
    trainable, total = count_parameters(model)
    accelerator.print(f"training ({config.method}): {trainable:,} of {total:,} parameters trainable "
                      f"({100 * trainable / max(total, 1):.1f}%)", file=sys.stderr)

    loader = DataLoader(
        examples, batch_size=config.batch_size, shuffle=True, drop_last=len(examples) >= config.batch_size,
        collate_fn=Collator(processor, family), num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    params = [p for p in model.parameters() if p.requires_grad]

    model.train()
    losses: list[tuple[int, float]] = []
    window: list[float] = []
    step, epoch, seen = 0, 0, 0
    start = time.perf_counter()
    bar = tqdm(total=config.steps, desc=f"train {config.method}", file=sys.stderr, dynamic_ncols=True,
               disable=not (config.progress and accelerator.is_local_main_process and sys.stderr.isatty()))
    while step < config.steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += batch["input_ids"].shape[0] * accelerator.num_processes
            window.append(accelerator.gather(loss.detach()[None]).mean().item())
            if len(window) == config.log_every or step == config.steps:
                losses.append((step, sum(window) / len(window)))
                bar.set_postfix(loss=f"{losses[-1][1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                window = []
            bar.update(1)
            if step >= config.steps:
                break
        epoch += 1
    bar.close()
    seconds = time.perf_counter() - start
    model = accelerator.unwrap_model(model)
    model.eval()
    accelerator.free_memory()
    return TrainReport(config.method, step, seen, trainable, total, seconds, losses)
