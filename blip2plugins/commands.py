"""Default plugin: the ``caption``, ``ask``, ``chat``, ``models`` and ``plugins`` commands."""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import os
import sys
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

import click
from tqdm import tqdm

from . import cli_options, scaffold
from .cli_options import (DEMO_MODEL, PROGRESS_THRESHOLD, Whole, generation_options, model_options, one_line,
                          table)
from .errors import Blip2Error, ImageError
from .hookspecs import hookimpl
from .images import describe, expand_folders, printable
from .plugins import model_presets, plugin_info
from .types import Result

if TYPE_CHECKING:
    from .host import Host

_OUTPUT_HELP = """

IMAGE is a path, a folder (its image files, recursively, in sorted order) or a reference an
image source plugin knows, e.g. a URL. For long lists use --files-from: it streams, so a
million paths need no shell globbing.

Output: one line per result on stdout, in input order. With one image the line is the text
alone; with several it is IMAGE, a tab and the text (`cut -f2` keeps the text). --json prints
one JSON object per line instead. Names print as UTF-8 on one line: bytes that are not UTF-8 as
\\xNN, control characters (plain lines only) as \\n, \\t. An image that fails prints `blip2: IMAGE: reason` on stderr,
the others are still processed, and the exit status is 1.
"""


input_options = cli_options.options(
    click.argument("images", nargs=-1, metavar="[IMAGE]..."),
    click.option("--files-from", type=click.File("rb"), metavar="FILE",
                 help="Read more IMAGEs from FILE, one per line ('-': standard input)."),
)
output_options = cli_options.options(
    click.option("--json", "as_json", is_flag=True, help="Print JSON lines."),
    click.option("--progress/--no-progress", default=None,
                 help=f"Progress bar on stderr.  [default: when more than {PROGRESS_THRESHOLD} images and stderr "
                      "is a terminal]"),
)


@dataclasses.dataclass
class _Inputs:
    """The images of a command: the IMAGE arguments, then --files-from's lines (file names as the OS
    decodes them, a leading BOM dropped); folders are expanded."""

    given: list[str]
    lines: IO[bytes] | None = None
    single: bool = False  # one image, named on the command line: output lines carry no IMAGE column
    problems: list[str] = dataclasses.field(default_factory=list)  # inputs that name no image, and why

    @classmethod
    def of(cls, images: tuple[str, ...], files_from: IO[bytes] | None) -> _Inputs:
        if not images and files_from is None:
            raise click.UsageError("no images: give IMAGE arguments or --files-from FILE")
        given, empty = expand_folders(images)
        single = len(images) == 1 and files_from is None and not os.path.isdir(images[0])
        return cls(given, files_from, single, [f"{describe(folder)}: {reason}" for folder, reason in empty])

    @property
    def total(self) -> int | None:
        return len(self.given) if self.lines is None else None

    def __iter__(self) -> Iterator[str]:
        yield from self.given
        if self.lines is None:
            return
        for number, raw in enumerate(self.lines, 1):
            line = os.fsdecode((raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw).rstrip(b"\r\n"))
            if not line.strip():
                continue
            refs, empty = expand_folders([line])
            for folder, reason in empty:
                self.problems.append(f"{describe(folder)}: {reason}")
                tqdm.write(f"blip2: {self.problems[-1]}", file=sys.stderr)
            yield from refs


def _run(inputs: _Inputs, results: Callable[[Iterator[str]], Iterator[Result]],
         lines: Callable[[str, Result], list[str]], progress: bool | None) -> bool:
    """Print each image's result as it comes, in input order; returns True when every image succeeded.

    ``results`` is the host's ``iter_*``: it reads the images in parallel, chunk by chunk, and holds
    at most three chunks, so memory stays bounded however many images come.
    """
    many = inputs.total is None or inputs.total > PROGRESS_THRESHOLD
    show = progress if progress is not None else many and sys.stderr.isatty()
    for problem in inputs.problems:
        click.echo(f"blip2: {problem}", err=True)
    read: deque[str] = deque()  # the images the host has taken, whose results are still to come

    def feed() -> Iterator[str]:
        for image in inputs:
            read.append(image)
            yield image

    ok = True
    with tqdm(total=inputs.total, unit="image", file=sys.stderr, disable=not show, leave=False) as bar:
        for result in results(feed()):
            image = read.popleft()
            bar.update()
            if result.ok:
                for line in lines(image, result):
                    tqdm.write(line, file=sys.stdout)
                continue
            ok = False
            label = describe(image)  # the host's errors start with it; print the reason once
            reason = (result.error or "").removeprefix(f"{label}: ")
            tqdm.write(f"blip2: {label}: {reason}", file=sys.stderr)
    return ok and not inputs.problems


def _texts(result: Result) -> list[str]:
    assert result.text is not None
    return [text for text, _ in result.candidates] or [result.text]


def _plain(inputs: _Inputs) -> Callable[[str, Result], list[str]]:
    if inputs.single:
        return lambda image, result: [one_line(text) for text in _texts(result)]
    return lambda image, result: [f"{printable(image)}\t{one_line(text)}" for text in _texts(result)]


def _record(image: str, result: Result, **fields: Any) -> str:
    record = {"image": printable(image, controls=False), **fields, "score": result.score, "model": result.model,
              "model_version": result.model_version}
    if len(result.candidates) > 1:
        record["candidates"] = [{"text": text, "score": score} for text, score in result.candidates]
    return json.dumps(record, ensure_ascii=False)


def _host_command(function: Callable[..., bool]) -> Callable[..., None]:
    """Load the host from the shared options, run the command, close the host; exit 1 on failures."""

    @model_options
    @generation_options
    @functools.wraps(function)
    def command(model: str | None, adapter: str | None, device: str, dtype: str, quantize: str | None,
                fast_preprocess: bool, batch_invariant: bool, **params: Any) -> None:
        gen = cli_options.generation_values(params)
        if "images" in params:  # before the slow model load, like the options
            params["images"] = _Inputs.of(params["images"], params.pop("files_from"))
        if not model:
            model = DEMO_MODEL
            click.echo("blip2: note: using the bundled demo model, which only knows synthetic shapes; pick another "
                       "with --model NAME or BLIP2_MODEL (`blip2 models` lists them)", err=True)
        cli_options.check_generation(model, {**gen, "n": params.get("n", 1)})
        host = cli_options.load_host(model, adapter, device, dtype, quantize, fast_preprocess=fast_preprocess,
                          batch_invariant=batch_invariant)
        try:
            ok = function(host, gen, **params)
        finally:
            host.close()
        if not ok:
            sys.exit(1)

    return command


@click.command(epilog=_OUTPUT_HELP)
@input_options
@click.option("--prompt", help="Text the captions start with (the model continues it).")
@click.option("-n", "--num-captions", "n", type=Whole(), default=1, show_default=True, help="Captions per image.")
@output_options
@_host_command
def caption(host: Host, gen: dict[str, Any], images: _Inputs, prompt: str | None, n: int, as_json: bool,
            progress: bool | None) -> bool:
    """Caption each IMAGE.

    With -n N each image gets N lines (or JSON "candidates"), best first. Every line shows the
    text after the process_result plugins (each candidate passes through them on its own).
    """
    def record(image: str, result: Result) -> list[str]:
        return [_record(image, result, caption=result.text)]

    return _run(images, lambda refs: host.iter_captions(refs, prompt=prompt, n=n, **gen),
                record if as_json else _plain(images), progress)


@click.command(epilog=_OUTPUT_HELP)
@click.argument("question")
@input_options
@output_options
@_host_command
def ask(host: Host, gen: dict[str, Any], question: str, images: _Inputs, as_json: bool,
        progress: bool | None) -> bool:
    """Answer QUESTION about each IMAGE, like grep: the question first, then the files."""
    def record(image: str, result: Result) -> list[str]:
        return [_record(image, result, question=question, answer=result.text)]

    return _run(images, lambda refs: host.iter_answers(refs, question, **gen), record if as_json else _plain(images),
                progress)


@click.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print each answer as a JSON line.")
@_host_command
def chat(host: Host, gen: dict[str, Any], image: str, as_json: bool) -> bool:
    """Chat about IMAGE: read one question per line on stdin and print each answer on stdout.

    Earlier turns are part of the context of each question. An empty line or end of input ends
    the chat. A question that fails prints `blip2: reason` on stderr, the chat goes on, and the
    exit status is 1. Works interactively and with piped input: `printf 'what?\\nwhere?\\n' | blip2 chat x.png`.
    """
    try:
        conversation = host.chat(image, **gen)
    except ImageError as exc:
        click.echo(f"blip2: {exc}", err=True)
        return False
    interactive = sys.stdin.isatty()
    ok = True
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        question = _read_line(sys.stdin).strip()
        if not question:
            return ok
        try:
            result = conversation.ask(question)
        except Blip2Error as exc:  # this question failed (e.g. too long); the chat goes on
            click.echo(f"blip2: {exc}", err=True)
            ok = False
            continue
        if as_json:
            click.echo(_record(image, result, question=question, answer=result.text))
        else:
            click.echo(one_line(result.text or ""))


def _read_line(stream: IO[str]) -> str:
    """One line of ``stream`` read as bytes: bytes that are not UTF-8 become surrogate escapes (the
    question then fails alone, as not UTF-8 text) instead of a ``UnicodeDecodeError`` ending the chat."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        return stream.readline()
    return buffer.readline().decode("utf-8", "surrogateescape")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def models(as_json: bool) -> None:
    """List the model presets: name, language-model family, tasks, source and description."""
    presets = list({id(preset): preset for preset in model_presets().values()}.values())
    presets.sort(key=lambda preset: preset.name)
    if as_json:
        click.echo(json.dumps([
            {"name": p.name, "aliases": list(p.aliases), "source": p.source, "family": p.family,
             "kind": p.kind, "retrieval": p.retrieval, "tasks": list(p.tasks),
             "description": p.description, "defaults": dict(p.defaults)}
            for p in presets
        ], indent=2))
        return
    table(["NAME", "FAMILY", "TASKS", "SOURCE", "DESCRIPTION"], [
        [p.name, p.family or ("-" if p.kind == "retrieval" else "auto"), ",".join(p.tasks), p.source,
         p.description + (f" (aliases: {', '.join(p.aliases)})" if p.aliases else "")]
        for p in presets
    ])


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every plugin: name, version, built-in or not, and the hooks each implements; installed
    plugins that are broken or left out by BLIP2_PLUGINS / BLIP2_BLOCK_PLUGINS, with the reason.
    Exits 1 when a plugin is broken. `blip2 plugins new NAME` writes a new plugin project."""
    if ctx.invoked_subcommand is not None:
        return
    infos = plugin_info()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(info) for info in infos], indent=2))
    else:
        table(["NAME", "VERSION", "KIND", "HOOKS"], [
            [i.name, i.version or "-", "builtin" if i.builtin else "external",
             ", ".join(i.hooks) if i.status == "loaded" else f"{i.status.upper()}: {i.reason}"] for i in infos
        ])
    if any(info.status == "broken" for info in infos):
        sys.exit(1)


plugins.add_command(scaffold.new)


@hookimpl
def register_commands(cli: click.Group) -> None:
    for command in (caption, ask, chat, models, plugins):
        cli.add_command(command)
