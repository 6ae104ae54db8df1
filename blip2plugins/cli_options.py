"""What every ``blip2`` command shares: the model and generation options, option types, loading the
host, one-line errors and plain tables. Plugin commands (the Label Studio backend's among them) use
these too, so an option means the same everywhere."""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

if TYPE_CHECKING:
    from .host import Host

Decorator = Callable[[Callable[..., Any]], Any]

DEMO_MODEL = "demo"
#: More images than this show a progress bar (on a terminal).
PROGRESS_THRESHOLD = 8
#: Generation option of the host -> its command-line flag.
GENERATION_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "min_new_tokens": "--min-new-tokens",
    "num_beams": "--beams",
    "do_sample": "--sample",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "repetition_penalty": "--repetition-penalty",
    "no_repeat_ngram_size": "--no-repeat-ngram-size",
    "seed": "--seed",
}


class _Brief(click.ParamType):
    """A number option whose error echoes at most the start of a very long wrong value."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value) > 40:
            self.fail(f"{value[:20]!r}... ({len(value):,} characters) is not a number this option takes", param, ctx)
        return super().convert(value, param, ctx)


class Whole(_Brief, click.types.IntParamType):
    """``int`` that never echoes thousands of digits back."""


class WholeRange(_Brief, click.IntRange):
    """``click.IntRange`` that never echoes thousands of digits back."""


class Real(_Brief, click.types.FloatParamType):
    """``float`` that never echoes thousands of characters back."""


class RealRange(_Brief, click.FloatRange):
    """``click.FloatRange`` that never echoes thousands of characters back."""


class PathName(click.Path):
    """``click.Path`` that refuses an empty name (it would mean the current folder) and a NUL byte."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and (not value or "\0" in value):
            self.fail("an empty path" if not value else "a path with a NUL byte", param, ctx)
        return super().convert(value, param, ctx)


def options(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` in order (as if stacked top to bottom)."""
    def apply(function: Callable[..., Any]) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return apply


def model_option(default: str | None = None) -> Decorator:
    """``--model`` (also ``BLIP2_MODEL``). Without a ``default`` the command gets ``None`` when none is
    given, and uses the demo model with a note."""
    shown = "" if default else f"  [default: {DEMO_MODEL}]"
    return click.option("--model", envvar="BLIP2_MODEL", show_envvar=True, default=default, show_default=bool(default),
                        metavar="NAME|PATH", help=f"Model preset (see `blip2 models`), checkpoint folder or hub id.{shown}")


#: ``--device``, ``--dtype``, ``--quantize``: where and at what precision the model loads.
precision_options = options(
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, mps or auto."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
                 show_default=True, help="Weight dtype."),
    click.option("--quantize", type=click.Choice(["8bit", "4bit"]),
                 help="Quantize the vision encoder and language model (bitsandbytes)."),
)
#: ``--fast-preprocess``, ``--batch-invariant``: how the host prepares and batches images.
host_options = options(
    click.option("--fast-preprocess", is_flag=True,
                 help="Faster, inexact preparation of large images (JPEG draft decoding, box reduction before the "
                      "resize): pixels differ slightly from the processor's."),
    click.option("--batch-invariant", is_flag=True,
                 help="Run each image alone, so its result does not depend on the others in a batch (8/4-bit and "
                      "half precision otherwise may); slower."),
)
#: The options of a command that loads a model: ``--model``, ``--adapter``, precision and host options.
model_options = options(
    model_option(),
    click.option("--adapter", metavar="NAME|PATH", help="Fine-tuned adapter to apply to the model."),
    precision_options,
    host_options,
)
#: The generation options, checked by :class:`~blip2plugins.generation.GenerationOptions`.
generation_options = options(
    click.option("--max-new-tokens", type=Whole(), help="Most tokens to generate."),
    click.option("--min-new-tokens", type=Whole(), help="Fewest tokens to generate."),
    click.option("--beams", "num_beams", type=Whole(), help="Beam-search width."),
    click.option("--sample/--no-sample", "do_sample", default=None, help="Sample instead of searching."),
    click.option("--temperature", type=Real(), help="Sampling temperature (default: the checkpoint's generation config)."),
    click.option("--top-p", type=Real(), help="Nucleus-sampling probability mass (default: the checkpoint's)."),
    click.option("--top-k", type=Whole(), help="Sample among the k likeliest tokens; 0: all (default: the checkpoint's, "
                 "transformers' 50 when it sets none)."),
    click.option("--repetition-penalty", type=Real(), help="Penalty for repeated tokens (1 = none)."),
    click.option("--no-repeat-ngram-size", type=Whole(), help="Never repeat an n-gram of this size."),
    click.option("--seed", type=Whole(), help="Random seed, for reproducible sampling."),
)


#: Every host option a command-line flag sets -> the flag (``n`` is ``--num-captions``).
_FLAGS = {**GENERATION_FLAGS, "n": "--num-captions"}


def generation_values(params: dict[str, Any]) -> dict[str, Any]:
    """Take the :data:`generation_options` out of a command's ``params``: those the user gave (the
    others keep the model preset's defaults)."""
    given = {name: params.pop(name) for name in GENERATION_FLAGS}
    return {name: value for name, value in given.items() if value is not None}


def check_generation(model: str, values: dict[str, Any]) -> None:
    """Validate generation options (over ``model``'s preset defaults) before the slow model load;
    raises a click usage error that names the flag."""
    from .errors import OptionError
    from .generation import GenerationOptions
    from .plugins import model_presets

    preset = model_presets().get(model)
    try:
        GenerationOptions.from_kwargs(values, preset.defaults if preset else None)
    except OptionError as exc:
        raise _usage_error(str(exc)) from None


def _usage_error(message: str) -> click.UsageError:
    """An option error in command-line terms, naming the first flag it mentions."""
    message = message.replace("do_sample=True", "--sample")
    mentioned = sorted((match.start(), flag) for name, flag in _FLAGS.items()
                       if (match := re.search(rf"\b{name}\b", message)))
    for name, flag in _FLAGS.items():
        message = re.sub(rf"\b{name}\b", flag, message)
    if not mentioned:
        return click.UsageError(message)
    flag = mentioned[0][1]
    return click.BadParameter(message.replace(f"{flag} must ", "must ", 1), param_hint=f"'{flag}'")


def load_host(model: str, adapter: str | None, device: str, dtype: str, quantize: str | None, *,
              fast_preprocess: bool = False, batch_invariant: bool = False) -> Host:
    """``Host.load`` with the values of :data:`model_options` (torch and transformers are imported here,
    only by the commands that need them)."""
    from .host import Host

    return Host.load(model, device=device, dtype=dtype, quantize=quantize, adapter=adapter,
                     fast_preprocess=fast_preprocess, batch_invariant=batch_invariant)


@contextmanager
def one_line_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Errors of ``kinds`` as one ``blip2: reason`` line on stderr and exit status 1 (no traceback)."""
    try:
        yield
    except kinds as exc:
        click.echo(f"blip2: {exc}", err=True)
        sys.exit(1)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space."""
    return " ".join(text.split())


def table(header: list[str], rows: list[list[str]]) -> None:
    """Print a plain table: columns padded to their widest cell, the last one not."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]))
