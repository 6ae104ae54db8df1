"""The training loop: AdamW with warmup and a decaying schedule, on :class:`accelerate.Accelerator`.

Runs unchanged on one process or under ``accelerate launch`` (each process takes its shard of
every batch; ``steps`` counts optimizer steps, each of ``grad_accum`` micro-batches). Seeded: the
same seed, data and config give the same weights. With ``checkpoint_dir`` it saves the trainable
weights, optimizer, schedule, data position and random state every ``checkpoint_every`` steps
(atomically: a killed run leaves the previous checkpoint) and ``resume=True`` continues from the
latest one, to the same weights an uninterrupted run reaches.

    report = train(model, processor, examples, TrainConfig(steps=2000, lr=1e-3, batch_size=64))
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import DataError, ModelLoadError, OptionError, StoreError
from ..families import Family, family_of
from ..jsonfile import JSONReadError, load_file
from . import checks
from .collate import AUGMENTATIONS, Collator, Example
from .methods import METHODS, apply_method, count_parameters

EvalFn = Callable[[torch.nn.Module], Mapping[str, float]]
#: The width of the widest BLIP-2 language model's layers (OPT-6.7b, FlanT5-XXL): a LoRA rank beyond it
#: adapts nothing more, and one of 10**9 would ask for terabytes.
MAX_LORA_RANK = 4096
_STATE = "trainer_state.json"


@dataclass
class TrainConfig:
    """How to train. ``warmup`` is a number of steps; ``schedule`` decays the rate after it.

    ``batch_size`` is per micro-batch and process: an optimizer step sees
    ``batch_size * grad_accum * processes`` examples. The ``lora_*`` fields apply to ``method="lora"``
    (see :mod:`blip2plugins.training.methods`).
    """

    method: str = "full"
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    shuffle: bool = True  # False: batches in the examples' own order (a lazily drawn, already random dataset)
    num_workers: int = 0
    log_every: int = 50
    progress: bool = True  # a progress bar on stderr, when it is a terminal
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_mlp: bool = False
    lora_targets: tuple[str, ...] | None = None
    lora_extra: tuple[str, ...] = ()
    lora_modules_to_save: tuple[str, ...] = ()
    lora_token_ids: tuple[int, ...] = ()  # embedding rows to train (and save) with the adapter: new words
    augment: tuple[str, ...] = ()  # "hflip", "vflip": random flips (texts must not say left/right, up/down)
    freeze: tuple[str, ...] = ()  # parameter-name prefixes kept frozen whatever the method, e.g. "vision_model."
    eval_every: int = 0  # 0: evaluate only at the end (when an eval function is given)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise OptionError(f"unknown training method {self.method!r}: expected one of {sorted(METHODS)}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "lora_alpha"):
            checks.whole(name, getattr(self, name), 1)
        checks.whole("lora_rank", self.lora_rank, 1, MAX_LORA_RANK)
        for name in ("warmup", "num_workers", "eval_every", "checkpoint_every"):
            checks.whole(name, getattr(self, name), 0)
        checks.whole("seed", self.seed, 0, checks.MAX_SEED)
        checks.real("lr", self.lr, 0, open_low=True)
        checks.real("weight_decay", self.weight_decay, 0)
        checks.real("min_lr_ratio", self.min_lr_ratio, 0, 1)
        if self.max_grad_norm is not None:
            checks.real("max_grad_norm", self.max_grad_norm, 0)  # 0: no clipping
        checks.real("lora_dropout", self.lora_dropout, 0, 1, open_high=True)
        if self.lora_targets is not None:
            checks.texts("lora_targets", self.lora_targets)
        checks.regexes("lora_extra", self.lora_extra)
        checks.texts("lora_modules_to_save", self.lora_modules_to_save)
        for token in self.lora_token_ids:
            checks.whole("lora_token_ids", token, 0)
        checks.texts("augment", self.augment)
        checks.texts("freeze", self.freeze)
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise OptionError(f"unknown augmentation {unknown[0]!r}: expected some of {sorted(AUGMENTATIONS)}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise OptionError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise OptionError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if (self.resume or self.checkpoint_every) and not self.checkpoint_dir:
            raise OptionError("resume and checkpoint_every need checkpoint_dir")
        if self.checkpoint_dir and os.path.exists(self.checkpoint_dir) and not os.path.isdir(self.checkpoint_dir):
            raise OptionError(f"checkpoint_dir {self.checkpoint_dir} is not a folder")


@dataclass
class TrainReport:
    """What a run did: parameter counts, time, the mean loss of every ``log_every`` steps and the evals."""

    method: str
    steps: int
    examples_seen: int
    trainable_params: int
    total_params: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None

    @property
    def first_loss(self) -> float:
        return self.losses[0][1] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1] if self.losses else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay


def _unwrapped(batches: Any) -> Any:
    """``batches``, with a :class:`DataError` raised in a loader worker re-raised with its own message
    (a worker's error arrives with the worker's traceback in its text)."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError as error:
            text = str(error)
            if text.startswith("Caught DataError"):
                raise DataError(text.rpartition("DataError: ")[2].strip()) from None
            raise
        yield batch


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters at ``config``'s learning rate; weight decay on matrices only."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def train(model: torch.nn.Module, processor: Any, examples: Sequence[Example], config: TrainConfig,
          *, family: Family | str | None = None, eval_fn: EvalFn | None = None) -> TrainReport:
    """Train ``model`` in place on ``examples`` (a sequence of :class:`Example`) and report.

    ``model`` may already be prepared by :func:`~blip2plugins.training.apply_method` (to keep the
    LoRA wrapper for saving). ``family`` defaults to the one of the model's language model.
    ``eval_fn(model)`` (run on the main process, in eval mode) is called every ``eval_every`` steps
    and at the end; its metrics land in ``report.evals``. The model is left in eval mode.
    """
    if family is None:
        family = family_of(model.config.text_config.model_type)
    # the collator holds decoder-only texts to it (learned positions end there; T5's relative ones do not)
    context = getattr(model.config.text_config, "max_position_embeddings", None)
    _allow_precision(config.mixed_precision)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(config.seed)
    model = apply_method(model, config)
    trainable, total = count_parameters(model)
    accelerator.print(f"training ({config.method}): {trainable:,} of {total:,} parameters trainable "
                      f"({100 * trainable / max(total, 1):.1f}%)", file=sys.stderr)

    loader = DataLoader(
        examples, batch_size=config.batch_size, shuffle=config.shuffle, drop_last=len(examples) >= config.batch_size,
        collate_fn=Collator(processor, family, augment=config.augment, seed=config.seed + accelerator.process_index,
                            max_length=context),
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    params = [p for p in model.parameters() if p.requires_grad]

    report = TrainReport(config.method, 0, 0, trainable, total, 0.0)
    step, epoch, batch_in_epoch = 0, 0, 0
    if config.resume:
        restored = _load_checkpoint(config, accelerator, model, optimizer, scheduler)
        if restored is not None:
            step, epoch, batch_in_epoch = restored["step"], restored["epoch"], restored["batch_in_epoch"]
            report.losses = [tuple(x) for x in restored["losses"]]  # type: ignore[misc]
            report.evals, report.examples_seen = restored["evals"], restored["examples_seen"]
            report.resumed_from = step
            accelerator.print(f"resumed from step {step} in {config.checkpoint_dir}", file=sys.stderr)

    model.train()
    window: list[float] = []
    micro = 0
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc=f"train {config.method}", file=sys.stderr, dynamic_ncols=True,
               disable=not (config.progress and accelerator.is_local_main_process and sys.stderr.isatty()))
    while step < config.steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, batch_in_epoch) if batch_in_epoch else loader
        for batch in _unwrapped(batches):
            batch_in_epoch += 1
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            report.examples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
            window.append(accelerator.gather(loss.detach()[None]).mean().item())
            if not math.isfinite(window[-1]):  # every process sees the same mean: all stop here
                raise OptionError(f"training diverged at step {step + 1}: the loss is {window[-1]} (a lower lr may help)")
            micro += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if len(window) >= config.log_every * config.grad_accum or step == config.steps:
                report.losses.append((step, sum(window) / len(window)))
                bar.set_postfix(loss=f"{report.losses[-1][1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                window = []
            if eval_fn is not None and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                report.evals.append(_evaluate(accelerator, model, eval_fn, step))
            if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
                _save_checkpoint(config, accelerator, model, optimizer, scheduler, report,
                                 {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch})
            if step >= config.steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    report.steps = step
    report.seconds = time.perf_counter() - start
    model = accelerator.unwrap_model(model)
    model.eval()
    accelerator.free_memory()
    return report


def _allow_precision(mixed_precision: str) -> None:
    """Let this run use its own mixed precision even when an earlier run in the process used another.

    accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another
    ``mixed_precision``; the distributed setup (``PartialState``) is kept.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()


def _evaluate(accelerator: Accelerator, model: torch.nn.Module, eval_fn: EvalFn, step: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if accelerator.is_main_process:
        inner = accelerator.unwrap_model(model)
        inner.eval()
        metrics = {k: float(v) for k, v in eval_fn(inner).items()}
        inner.train()
    accelerator.wait_for_everyone()
    return {"step": step, **metrics}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(config: TrainConfig, accelerator: Accelerator, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, report: TrainReport,
                     position: dict[str, int]) -> None:
    """Write ``checkpoint_dir/step-N`` via a temporary folder and a rename; keep only the newest."""
    root = Path(config.checkpoint_dir)  # type: ignore[arg-type]
    final = root / f"step-{position['step']:08d}"
    tmp = root / f".tmp-step-{position['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    try:
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / f"rng-{rank}.pt")
        if accelerator.is_main_process:
            inner = accelerator.unwrap_model(model)
            torch.save(_trainable_state(inner), tmp / "trainable.pt")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            state = {**position, "losses": report.losses, "evals": report.evals, "examples_seen": report.examples_seen,
                     "method": config.method}
            (tmp / _STATE).write_text(json.dumps(state))
    except (OSError, RuntimeError) as exc:  # a full disk: torch says RuntimeError ("file write failed")
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[-200:]
        raise StoreError(f"cannot save a checkpoint in {root}: {reason}") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder in ``checkpoint_dir``, if any."""
    done = sorted(p for p in Path(checkpoint_dir).glob("step-*") if (p / _STATE).is_file())
    return done[-1] if done else None


def _load_checkpoint(config: TrainConfig, accelerator: Accelerator, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any] | None:
    """Restore the latest checkpoint into the run; a damaged one is a :class:`ModelLoadError` naming it.

    Tensors and states load with ``weights_only``: a checkpoint folder cannot run code.
    """
    folder = latest_checkpoint(config.checkpoint_dir)  # type: ignore[arg-type]
    if folder is None:
        return None
    try:
        state = _checked_state(load_file(folder / _STATE))
    except (JSONReadError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot resume from checkpoint {folder}: {exc}") from None
    if state.get("method") != config.method:
        raise ModelLoadError(f"checkpoint {folder} was made by method {state.get('method')!r}, not {config.method!r}")
    inner = accelerator.unwrap_model(model)
    try:
        weights = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
        params = dict(inner.named_parameters())
        unknown = sorted(set(weights) - set(params))
        if unknown:
            raise ValueError(f"trainable.pt holds {unknown[0]!r}, which this model lacks")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng_file = folder / f"rng-{accelerator.process_index}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in torch, pickle or the state dicts
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(f"cannot resume from checkpoint {folder}: {reason}") from None
    return state


def _checked_state(state: Any) -> dict[str, Any]:
    """The saved position and history, or ``ValueError`` when a field is missing or of the wrong kind."""
    if not isinstance(state, dict):
        raise ValueError(f"{_STATE} is not a JSON object")
    for key in ("step", "epoch", "batch_in_epoch", "examples_seen"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{_STATE}: {key} must be a whole number >= 0, got {value!r}")
    losses, evals = state.get("losses"), state.get("evals")
    if not isinstance(losses, list) or not all(
            isinstance(x, list) and len(x) == 2 and all(isinstance(v, (int, float)) for v in x) for x in losses):
        raise ValueError(f"{_STATE}: losses must be a list of [step, loss] pairs")
    if not isinstance(evals, list) or not all(isinstance(x, dict) for x in evals):
        raise ValueError(f"{_STATE}: evals must be a list of objects")
    return state
