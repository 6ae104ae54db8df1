"""Default plugin: ``blip2 train``, fine-tuning from caption / VQA files into the adapter store."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from ..cli_options import PathName, Real, RealRange, WholeRange
from ..hookspecs import hookimpl
from .checks import MAX_SEED

_METHODS = ("lora", "qformer", "full")


@hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command("train")
    @click.option("--data", "data", multiple=True, required=True, type=PathName(path_type=Path),
                  help="JSONL, CSV, COCO captions JSON or Label Studio JSON export (repeatable).")
    @click.option("--method", type=click.Choice(_METHODS), default="lora", show_default=True,
                  help="lora: adapters on the language model; qformer: Q-Former, queries and projection; full: everything.")
    @click.option("--model", envvar="BLIP2_MODEL", default="demo", show_default=True, metavar="NAME|PATH",
                  help="Base model: preset, checkpoint folder or hub id.")
    @click.option("--store", type=PathName(file_okay=False, path_type=Path), envvar="BLIP2_ADAPTER_STORE",
                  help="Adapter store to add the new version to (default: BLIP2_ADAPTER_STORE or the user cache).")
    @click.option("--name", default="default", show_default=True, help="Adapter name inside the store.")
    @click.option("--out", type=PathName(file_okay=False, path_type=Path),
                  help="Write the artifact and report to this folder instead of a store.")
    @click.option("--eval-split", type=RealRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
                  help="Fraction of images held out to measure the model before and after.")
    @click.option("--metric", help="Gate metric: caption_exact_match, bleu4, cider or vqa_accuracy "
                                   "(default: caption_exact_match, or vqa_accuracy without captions).")
    @click.option("--margin", type=Real(), default=0.0, show_default=True,
                  help="The new adapter must beat the current one by this much to be promoted.")
    @click.option("--no-promote", is_flag=True, help="Store the new version without judging or promoting it.")
    @click.option("--strict", is_flag=True, help="Fail on the first bad record instead of skipping it.")
    @click.option("--steps", type=WholeRange(1), default=300, show_default=True, help="Optimizer steps.")
    @click.option("--batch-size", type=WholeRange(1), default=16, show_default=True, help="Examples per micro-batch.")
    @click.option("--grad-accum", type=WholeRange(1), default=1, show_default=True,
                  help="Micro-batches per optimizer step.")
    @click.option("--lr", type=RealRange(0.0, min_open=True), default=1e-3, show_default=True,
                  help="Peak learning rate.")
    @click.option("--warmup", type=WholeRange(0), default=30, show_default=True, help="Warmup steps.")
    @click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine", show_default=True)
    @click.option("--seed", type=WholeRange(0, MAX_SEED), default=0, show_default=True)
    @click.option("--lora-rank", type=WholeRange(1), default=8, show_default=True)
    @click.option("--lora-alpha", type=WholeRange(1), default=16, show_default=True)
    @click.option("--lora-dropout", type=RealRange(0.0, 1.0, max_open=True), default=0.0, show_default=True)
    @click.option("--lora-mlp", is_flag=True, help="Also adapt the language model's MLP layers.")
    @click.option("--lora-extra", multiple=True, metavar="REGEX",
                  help="More LoRA targets, as full module-name regexes (e.g. 'qformer\\..*\\.(query|value)').")
    @click.option("--augment", multiple=True, type=click.Choice(["hflip", "vflip"]),
                  help="Random flips of the training images (only for texts without left/right, up/down).")
    @click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
    @click.option("--checkpoint-dir", type=PathName(file_okay=False, path_type=Path),
                  help="Save resumable checkpoints here.")
    @click.option("--checkpoint-every", type=WholeRange(0), default=0, help="Steps between checkpoints.")
    @click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --checkpoint-dir.")
    @click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def train_command(data: tuple[Path, ...], method: str, model: str, store: Path | None, name: str,
                      out: Path | None, eval_split: float, metric: str | None, margin: float, no_promote: bool,
                      strict: bool, device: str, as_json: bool, checkpoint_dir: Path | None, lora_extra: tuple[str, ...],
                      augment: tuple[str, ...], **train_options: object) -> None:
        """Fine-tune MODEL on labeled captions / answers and add the result to the adapter store.

        The new version is measured on the held-out split against the one currently served and
        promoted only if it is at least as good (see --metric, --margin). Runs unchanged under
        `accelerate launch` on several processes or GPUs.
        """
        from ..errors import Blip2Error, OptionError
        from ..store import AdapterStore
        from .data import read_dataset
        from .finetune import FinetuneConfig, finetune
        from .loop import TrainConfig

        try:  # every setting is checked here, before the data is read and the model loads
            train_config = TrainConfig(method=method, lora_extra=lora_extra, augment=augment, progress=True,
                                       checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
                                       **train_options)  # type: ignore[arg-type]
            config = FinetuneConfig(train=train_config, eval_split=eval_split, metric=metric, margin=margin,
                                    promote=not no_promote)
        except OptionError as exc:
            raise _bad_setting(exc, click.get_current_context()) from None
        try:
            dataset = read_dataset(list(data), strict=strict)
            target = {"out": out} if out else {"store": AdapterStore(store)}
            result = finetune(model, dataset, config, name=name, device=device, strict=strict,
                              log=lambda line: click.echo(line, err=True), **target)
        except (Blip2Error, ValueError, OSError) as exc:
            click.echo(f"blip2: {exc}", err=True)
            sys.exit(1)
        if not result.report:  # not the main process
            return
        if as_json:
            adapter = result.adapter
            summary = {"adapter": None if adapter is None else {
                "name": adapter.name, "version": adapter.version, "path": adapter.path, "status": adapter.status,
                "reason": adapter.reason}, **{k: result.report[k] for k in ("model", "method", "metrics", "baseline")}}
            click.echo(json.dumps(summary, indent=2))
        elif result.adapter is not None:
            click.echo(f"{result.adapter.name} {result.adapter.version}: {result.adapter.status} "
                       f"({result.adapter.reason}) -> {result.adapter.path}")
        else:
            click.echo(f"wrote {out}")


def _bad_setting(exc: Exception, ctx: click.Context) -> click.UsageError:
    """A setting refused by a config, in command-line terms: ``Invalid value for '--flag': must ...``, or
    the message with the settings it names as flags (``--resume and --checkpoint-every need --checkpoint-dir``)."""
    flags = {param.name: param.opts[-1] for param in ctx.command.params
             if param.name and param.opts and param.opts[-1].startswith("--")}
    name, _, rest = str(exc).partition(" ")
    if name in flags and rest.startswith("must "):
        return click.BadParameter(rest, param_hint=f"'{flags[name]}'")
    message = str(exc)
    for setting, flag in flags.items():
        if "_" in setting or message.startswith(f"{setting} "):
            message = re.sub(rf"\b{setting}\b", flag, message)
    return click.UsageError(message)
