"""Train a BLIP-2 retrieval model (:class:`~transformers.Blip2ForImageTextRetrieval`) with ITC + ITM.

The loss is :func:`~blip2plugins.training.retrieval_losses.itc_loss` (learned temperature, every item
of the same group a positive) plus ``itm_weight`` times
:func:`~blip2plugins.training.retrieval_losses.itm_loss` (hard negatives mined from the ITC
similarity); the embeddings come from :mod:`blip2plugins.retrieval`, exactly as at inference. The loop
is the one of :mod:`blip2plugins.training.loop` (accelerate, AdamW without decay on biases / norms,
warmup + schedule, clipping), seeded: the same seed, data and config give the same weights. Under
``accelerate launch`` each process takes ``batch_size`` items of every step and the contrastive
negatives come from all of them (ITM negatives from the process's own items). On CPU processes, set
up the distributed state first with ``accelerate.PartialState(cpu=True)`` (gloo), as ``finetune`` does.

    report = train_retrieval(model, processor, [(image, "a red circle"), ...], RetrievalTrainConfig(steps=500))
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Hashable, Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import Blip2ForImageTextRetrieval

from .. import retrieval
from ..errors import DataError, OptionError
from . import checks
from .loop import TrainConfig, TrainReport, make_optimizer, lr_factor
from .methods import count_parameters
from .retrieval_losses import Temperature, group_ids, itc_loss, itm_loss

#: ``(image, text)`` or ``(image, text, group)``: items of the same group (default: the same text) are positives.
RetrievalExample = tuple[Any, ...]


@dataclass
class RetrievalTrainConfig:
    """How to train a retrieval model. ``freeze`` lists parameter-name prefixes that stay fixed
    (default: the vision encoder, as BLIP-2 does). ``batch_size`` is per process."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    itm_weight: float = 1.0
    temperature: float = 0.07  # initial value of the learned ITC temperature
    freeze: tuple[str, ...] = ("vision_model",)
    max_length: int = 32  # text tokens (further capped by the Q-Former's positions)
    log_every: int = 50
    progress: bool = True  # a progress bar on stderr, when it is a terminal

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "max_length"):
            checks.whole(name, getattr(self, name), 1)
        checks.whole("warmup", self.warmup, 0)
        checks.whole("seed", self.seed, 0, checks.MAX_SEED)
        checks.real("lr", self.lr, 0, open_low=True)
        checks.real("weight_decay", self.weight_decay, 0)
        checks.real("min_lr_ratio", self.min_lr_ratio, 0, 1)
        if self.max_grad_norm is not None:
            checks.real("max_grad_norm", self.max_grad_norm, 0)
        checks.real("itm_weight", self.itm_weight, 0)
        checks.real("temperature", self.temperature, 0.001, 0.5)
        checks.texts("freeze", self.freeze)
        if self.schedule not in ("cosine", "linear", "constant"):
            raise OptionError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")

    def loop_config(self) -> TrainConfig:
        """The schedule and optimizer settings as the generic loop's :class:`TrainConfig`."""
        return TrainConfig(steps=self.steps, lr=self.lr, weight_decay=self.weight_decay, warmup=self.warmup,
                           schedule=self.schedule, min_lr_ratio=self.min_lr_ratio, seed=self.seed)


@dataclass
class RetrievalTrainReport(TrainReport):
    """:class:`TrainReport` plus the mean ITC and ITM losses of every ``log_every`` steps and the final temperature."""

    itc_losses: list[tuple[int, float]] = field(default_factory=list)
    itm_losses: list[tuple[int, float]] = field(default_factory=list)
    temperature: float = math.nan


class RetrievalObjective(nn.Module):
    """The model and the learned temperature, whose ``forward`` returns ``(loss, itc, itm)`` of a batch
    (one module, so that ``accelerate`` wraps and synchronises both)."""

    def __init__(self, model: Blip2ForImageTextRetrieval, temperature: Temperature, itm_weight: float) -> None:
        super().__init__()
        self.model, self.temperature, self.itm_weight = model, temperature, itm_weight

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                groups: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        model = self.model
        vision_trains = any(p.requires_grad for p in model.vision_model.parameters())
        with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
            vision = retrieval.vision_states(model, pixel_values)
        images = retrieval.project_images(model, retrieval.query_states(model, vision))
        texts = retrieval.text_embeddings(model, input_ids, attention_mask)
        temperature = self.temperature()
        itc = itc_loss(images, texts, groups, temperature)
        if not self.itm_weight:
            return itc, itc, torch.zeros_like(itc)
        with torch.no_grad():
            similarity = retrieval.itc(images, texts) / temperature
        itm = itm_loss(model, vision, input_ids, attention_mask, similarity, groups, generator)
        return itc + self.itm_weight * itm, itc, itm


class _Examples(Dataset):
    """``examples`` checked item by item: ``(image, text, group)``, the group defaulting to the text."""

    def __init__(self, examples: Sequence[RetrievalExample]) -> None:
        if len(examples) == 0:
            raise DataError("examples: no training examples")
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[Any, str, Hashable]:
        item = self.examples[i]
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise DataError(f"example {i}: expected (image, text) or (image, text, group), got {type(item).__name__}")
        if not isinstance(item[1], str) or not item[1].strip():
            raise DataError(f"example {i}: the text must be a non-empty string, got {item[1]!r}")
        return item[0], item[1], item[2] if len(item) == 3 else item[1]


class _Collate:
    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor, self.max_length = processor, max_length

    def __call__(self, items: list[tuple[Any, str, Hashable]]) -> dict[str, torch.Tensor]:
        images, texts, groups = zip(*items)
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt").pixel_values
        input_ids, attention_mask = retrieval.tokenize(self.processor.tokenizer, list(texts), self.max_length)
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                "groups": group_ids(groups)}


def freeze(model: nn.Module, prefixes: Sequence[str]) -> None:
    """Train every parameter except those named ``prefix`` or ``prefix.*`` for a prefix of ``prefixes``."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name == prefix or name.startswith(prefix + ".") for name in names):
            parts = sorted({name.split(".")[0] for name in names})
            raise OptionError(f"freeze: no parameter is named {prefix!r} or starts with it (parts: {', '.join(parts)})")
    for name, param in model.named_parameters():
        param.requires_grad = not any(name == p or name.startswith(p + ".") for p in prefixes)


def train_retrieval(model: Blip2ForImageTextRetrieval, processor: Any, examples: Sequence[RetrievalExample],
                    config: RetrievalTrainConfig) -> RetrievalTrainReport:
    """Train ``model`` in place on ``examples`` with ITC + ITM and report; the model is left in eval mode.

    ``processor`` is a :class:`~transformers.Blip2Processor` (images and the Q-Former's tokenizer).
    """
    accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(config.seed)
    freeze(model, config.freeze + (() if config.itm_weight else ("itm_head",)))
    objective = RetrievalObjective(model, Temperature(config.temperature), config.itm_weight)
    trainable, total = count_parameters(model)
    accelerator.print(f"training (retrieval): {trainable:,} of {total:,} parameters trainable "
                      f"({100 * trainable / max(total, 1):.1f}%)", file=sys.stderr)
    max_length = min(config.max_length, model.config.qformer_config.max_position_embeddings)
    data = _Examples(examples)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=len(data) >= config.batch_size,
                        collate_fn=_Collate(processor, max_length), generator=torch.Generator().manual_seed(config.seed))
    loop_config = config.loop_config()
    optimizer = make_optimizer(objective, loop_config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, loop_config))
    wrapped, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    params = [p for p in objective.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)

    report = RetrievalTrainReport("retrieval", 0, 0, trainable, total, 0.0)
    windows: list[list[float]] = [[], [], []]
    step, epoch = 0, 0
    wrapped.train()
    start = time.perf_counter()
    bar = tqdm(total=config.steps, desc="train retrieval", file=sys.stderr, dynamic_ncols=True,
               disable=not (config.progress and accelerator.is_local_main_process and sys.stderr.isatty()))
    while step < config.steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            losses = wrapped(**batch, generator=generator)
            accelerator.backward(losses[0])
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            bar.update(1)
            report.examples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
            for window, value in zip(windows, accelerator.gather(torch.stack(losses).detach()[None]).mean(dim=0)):
                window.append(value.item())
            if step % config.log_every == 0 or step == config.steps:
                for series, window in zip((report.losses, report.itc_losses, report.itm_losses), windows):
                    series.append((step, sum(window) / len(window)))
                    window.clear()
                bar.set_postfix(loss=f"{report.losses[-1][1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step >= config.steps:
                break
        epoch += 1
    bar.close()
    report.steps = step
    report.seconds = time.perf_counter() - start
    report.temperature = objective.temperature().item()
    model.eval()
    accelerator.free_memory()
    return report
