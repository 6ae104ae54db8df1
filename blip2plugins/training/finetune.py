"""Fine-tune a BLIP-2 model on a caption / VQA dataset and store the result as an adapter version.

The library entry point behind ``blip2 train`` and the Label Studio backend's retraining:

    result = finetune("demo", "labels.jsonl", FinetuneConfig(TrainConfig(method="lora", steps=300)),
                      store=AdapterStore("adapters"), name="team-words")
    result.adapter.status  # "promoted" or "refused", result.adapter.reason says why

Steps: read and check the data, split off a held-out set (grouped by image), measure the model
currently served (the store's current version, else the base) on it, train, measure the new
adapter on the same held-out set, write the artifact, ``report.json`` and ``curve.png`` as a new
store version (``training_finished`` fires), then let the store's eval gate promote it (or refuse
it, with the reason recorded; ``adapter_promoted`` fires on promotion). Under ``accelerate launch``
every process trains; evaluation and storage run on the main process only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError

from .. import artifacts, models, plugins
from ..errors import OptionError, StoreError
from ..files import fsync_dir
from ..host import Host
from ..store import AdapterStore
from ..types import AdapterVersion
from . import checks
from .collate import Collator
from .data import CaptionDataset, Record, read_dataset
from .loop import TrainConfig, train
from .methods import apply_method
from .metrics import caption_metrics, vqa_accuracy

Log = Callable[[str], None]
#: What the gate can compare: the held-out metrics :func:`evaluate` measures (higher is better).
GATE_METRICS = ("caption_exact_match", "bleu4", "cider", "vqa_accuracy")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class FinetuneConfig:
    """A run: how to train, how much to hold out, and the gate.

    ``metric`` defaults to caption exact match when the held-out set has captions, else VQA
    accuracy; a new adapter is promoted when its metric is at least the current one's plus
    ``margin`` on the same held-out set. With ``new_words`` (LoRA only), the words of the labels
    that the model never says on the training images (a team's own vocabulary, a new colour) get
    their token rows trained too, in the input embeddings and the output layer.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    eval_split: float = 0.1
    metric: str | None = None
    margin: float = 0.0
    promote: bool = True
    eval_batch_size: int = 32
    new_words: bool = True

    def __post_init__(self) -> None:
        checks.real("eval_split", self.eval_split, 0, 1, open_high=True)
        checks.real("margin", self.margin)
        checks.whole("eval_batch_size", self.eval_batch_size, 1)
        if self.metric is not None and self.metric not in GATE_METRICS:
            raise OptionError(f"unknown gate metric {self.metric!r}: expected one of {', '.join(GATE_METRICS)}")


@dataclass
class FinetuneResult:
    """What a run produced: the stored version (``None`` off the main process) and the report."""

    adapter: AdapterVersion | None
    report: dict[str, Any]

    @property
    def promoted(self) -> bool:
        return self.adapter is not None and self.adapter.status == "promoted"


def evaluate(loaded: models.LoadedModel, held_out: CaptionDataset, *, batch_size: int = 32) -> dict[str, float]:
    """Caption metrics (exact match, BLEU-4, CIDEr) and VQA accuracy of ``loaded`` on ``held_out``.

    Each image is captioned once and scored against every accepted caption of it; each question
    is asked once and scored against every accepted answer. Runs through the host, as served.
    """
    captions: dict[str, list[str]] = defaultdict(list)
    answers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in held_out:
        if record.question is None:
            captions[record.image].append(record.target)
        else:
            answers[(record.image, record.question)].append(record.target)
    metrics: dict[str, float] = {"n_captions": float(len(captions)), "n_questions": float(len(answers))}
    with Host(loaded, max_batch_size=batch_size) as host:
        if captions:
            images = list(captions)
            got = [r.text or "" for r in host.caption(images)]
            scores = caption_metrics(got, [captions[i] for i in images])
            metrics.update({f"caption_{k}" if k == "exact_match" else k: v for k, v in scores.items()})
        if answers:
            pairs = list(answers)
            got = [r.text or "" for r in host.ask([i for i, _ in pairs], [q for _, q in pairs])]
            metrics["vqa_accuracy"] = vqa_accuracy(got, [answers[p] for p in pairs])
    return metrics


_WORD = re.compile(r"[^\W_]+")
#: At most this many training images are captioned to find the words the model already says.
NEW_WORDS_SAMPLE = 512


def new_words(loaded: models.LoadedModel, records: Sequence[Record], *, batch_size: int = 32) -> list[str]:
    """The words of the labels that the model never says about the same images (up to
    :data:`NEW_WORDS_SAMPLE` of them): what a fine-tune has to teach it to say."""
    images = list(dict.fromkeys(r.image for r in records))[:NEW_WORDS_SAMPLE]
    questions = list(dict.fromkeys((r.image, r.question) for r in records if r.question is not None))[:NEW_WORDS_SAMPLE]
    with Host(loaded, max_batch_size=batch_size) as host:
        said = [r.text or "" for r in host.caption(images)]
        if questions:
            said += [r.text or "" for r in host.ask([i for i, _ in questions], [q for _, q in questions])]
    known = {w for text in said for w in _WORD.findall(text.lower())}
    wanted = dict.fromkeys(w for r in records for w in _WORD.findall(r.target.lower()))
    return [w for w in wanted if w not in known]


def _token_ids(tokenizer: Any, word: str) -> set[int]:
    """The tokens of ``word`` at the start of a text and after a space."""
    return {i for text in (word, f" {word}") for i in tokenizer(text, add_special_tokens=False).input_ids}


def finetune(model: str, data: CaptionDataset | str | Path | Sequence[str | Path], config: FinetuneConfig, *,
             store: AdapterStore | str | Path | None = None, name: str = "default", out: str | Path | None = None,
             device: str = "auto", log: Log = _stderr, strict: bool = False) -> FinetuneResult:
    """Train an adapter of ``config.train.method`` for ``model`` on ``data``; store and gate it.

    Give ``store`` (an :class:`AdapterStore` or its folder) to version and gate the result, or
    ``out`` to just write the artifact and report to a folder. With ``strict``, an image that does
    not decode raises :class:`DataError` instead of dropping its records.
    """
    if (store is None) == (out is None):
        raise ValueError("give exactly one of store= or out=")
    if out is not None:
        _check_out(Path(out))
    started = time.perf_counter()
    dataset = data if isinstance(data, CaptionDataset) else read_dataset(data, strict=strict)
    dataset = dataset.check_images(strict=strict)
    if len(dataset) == 0:
        raise ValueError(f"no usable training records: {dataset.summary()}")
    train_set, held_out = dataset.split(config.eval_split, seed=config.train.seed)
    loaded = models.load(model, device=device, dtype="float32", retrieval=False)
    too_long = {r: why for r in dataset if (why := _too_long(loaded, r)) is not None}
    dataset, train_set, held_out = (part.drop(too_long.get, strict=strict) for part in (dataset, train_set, held_out))
    if len(train_set) == 0:
        raise ValueError(f"no usable training records: {dataset.summary()}")
    main = _is_main_process(cpu=loaded.device.type == "cpu")
    if not main:
        log = _quiet
    log(dataset.summary())
    base_model = loaded.preset.name
    store = AdapterStore(store) if isinstance(store, (str, Path)) else store
    current = store.current(base_model, name) if store is not None else None

    baseline: dict[str, float] = {}
    if main and len(held_out):
        if current is not None:
            models.attach_adapter(loaded, current.path)
        baseline = evaluate(loaded, held_out, batch_size=config.eval_batch_size)
        models.detach_adapter(loaded)
        log(f"held-out before training ({current.version if current else 'base model'}): {_show(baseline)}")

    train_config = config.train
    new: list[str] = []
    if train_config.method == "lora" and config.new_words:
        new = new_words(loaded, train_set, batch_size=config.eval_batch_size)
        ids = {i for word in new for i in _token_ids(loaded.processor.tokenizer, word)}
        train_config = dataclasses.replace(train_config, lora_token_ids=tuple(sorted(ids | set(train_config.lora_token_ids))))
        log(f"new words in the labels: {', '.join(new) or 'none'}")
    trainee = apply_method(loaded.model, train_config)
    inner = trainee.get_base_model() if hasattr(trainee, "get_base_model") else trainee
    probe = dataclasses.replace(loaded, model=inner)

    def eval_fn(_: torch.nn.Module) -> dict[str, float]:
        return evaluate(probe, held_out, batch_size=config.eval_batch_size) if len(held_out) else {}

    report = train(trainee, loaded.processor, train_set.examples(loaded.family), train_config,
                   family=loaded.family, eval_fn=eval_fn)
    final = report.evals[-1] if report.evals else {}
    metrics = {k: v for k, v in final.items() if k != "step"}
    log(f"held-out after training: {_show(metrics)}")
    if not main:
        return FinetuneResult(None, {})
    facts: dict[str, Any] = {
        "model": base_model, "model_version": loaded.base_version, "method": config.train.method,
        "config": {**dataclasses.asdict(train_config), "eval_split": config.eval_split}, "new_words": new,
        "dataset": {"fingerprint": dataset.fingerprint(), "summary": dataset.summary(), "train": len(train_set),
                    "held_out": len(held_out), "skipped": [dataclasses.asdict(p) for p in dataset.skipped[:50]],
                    "duplicates": dataset.duplicates},
        "baseline": baseline, "baseline_version": current.version if current else None,
        "metrics": metrics, "train": report.to_dict(),
    }

    def write(folder: Path) -> None:
        artifacts.save(trainee, train_config.method, folder, base_model=loaded.preset.source)
        _write_report(facts, folder)

    if store is None:
        with _writing(Path(out)):  # type: ignore[arg-type]
            _write_aside(Path(out), write)  # type: ignore[arg-type]
        facts["seconds"] = round(time.perf_counter() - started, 1)
        return FinetuneResult(None, facts)
    with _writing(store.root):
        adapter = store.add(base_model, name, write, method=config.train.method, metrics=metrics,
                            dataset=facts["dataset"]["fingerprint"], parent=current.version if current else None)
    plugins.notify("training_finished", adapter)
    if config.promote:
        metric = config.metric or ("caption_exact_match" if "caption_exact_match" in metrics else "vqa_accuracy")
        adapter = store.judge(adapter, metric=metric, margin=config.margin, baseline=baseline.get(metric),
                              baseline_version=current.version if current else None)
        log(f"{adapter.version}: {adapter.status} ({adapter.reason})")
    facts["seconds"] = round(time.perf_counter() - started, 1)
    return FinetuneResult(adapter, facts)


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder with files in it (old files would mix with the new)."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"out folder {out} is a file: give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise OptionError(f"out folder {out} is not empty: give a new or empty folder")


def _write_aside(out: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a new folder beside ``out``, fsync it and rename it to ``out`` (which may be an
    empty folder): a run that fails while writing leaves nothing behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.partial")
    partial.mkdir()
    try:
        write(partial)
        for path in partial.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fsync_dir(out.parent)


@contextmanager
def _writing(where: Path) -> Iterator[None]:
    """A failed write (a full disk, a read-only folder) as one :class:`StoreError` line naming ``where``."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        match = re.search(r"I/O error: (.*) \(os error \d+\)", reason)  # safetensors' wording
        reason = " ".join((match.group(1) if match else reason).split())
        raise StoreError(f"cannot write the trained adapter to {where}: {reason}") from None


def _too_long(loaded: models.LoadedModel, record: Record) -> str | None:
    """Why ``record`` does not fit the model's context beside the image's query tokens, or ``None``."""
    family, tokenizer = loaded.family, loaded.processor.tokenizer
    prompt = "" if record.question is None else family.render_question(record.question)
    if family.decoder_only:
        tokens = len(tokenizer(Collator.text(prompt, record.target)).input_ids) + 1  # + EOS
    else:
        tokens = max(len(tokenizer(prompt).input_ids), len(tokenizer(record.target).input_ids))
    room = loaded.max_positions - loaded.num_query_tokens
    if tokens <= room:
        return None
    return f"too long for the model: {tokens} tokens, and its context holds {room} beside the image"


def _quiet(message: str) -> None:
    """The log of processes other than the main one."""


def _is_main_process(*, cpu: bool) -> bool:
    """Whether this is the main process; sets up the distributed state (gloo on CPU) on first use."""
    from accelerate import PartialState

    return PartialState(cpu=cpu).is_main_process


def _show(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if not k.startswith("n_")) or "nothing to measure"


def _write_report(facts: dict[str, Any], folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(facts, indent=1, default=str))
    from .plot import plot_curves

    plot_curves({"losses": facts["train"]["losses"], "evals": facts["train"]["evals"]}, folder / "curve.png")
