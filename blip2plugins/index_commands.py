"""Default plugin: ``blip2 index build|add|remove|search|info`` (an image index, :mod:`blip2plugins.index`)
and ``blip2 match`` (image-text matching)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

import click

from . import cli_options
from .cli_options import DEMO_MODEL, PROGRESS_THRESHOLD, PathName, one_line, one_line_errors, options
from .errors import Blip2Error
from .hookspecs import hookimpl
from .images import describe, printable
from .presets import resolve

if TYPE_CHECKING:
    from .host import Host
    from .index import ImageIndex, IndexReport

_DEMO_NOTE = ("blip2: note: using the bundled demo model, which only knows synthetic shapes; pick another with "
              "--model NAME or BLIP2_MODEL (`blip2 models` lists them)")

index_path = PathName(dir_okay=False, path_type=Path)


class _Count(click.IntRange):
    """A whole number >= 1 whose error quotes at most 20 characters of what was given."""

    def __init__(self) -> None:
        super().__init__(min=1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and len(value) > 20:
            self.fail(f"{value[:20]!r}... ({len(value):,} characters) is not a count", param, ctx)
        return super().convert(value, param, ctx)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
device_options = options(
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, mps or auto."),
    click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
                 show_default=True, help="Weight dtype."),
)
embed_options = options(
    click.option("--batch-size", type=_Count(), help="Images per chunk.  [default: the host's batch size]"),
    click.option("--progress/--no-progress", default=None,
                 help=f"Progress bar on stderr.  [default: when more than {PROGRESS_THRESHOLD} images and stderr "
                      "is a terminal]"),
    json_option,
)
index_model_option = click.option(
    "--model", metavar="NAME|PATH", help="Retrieval model (preset, folder or hub id).  [default: the index's model]")


def _index() -> ModuleType:
    """:mod:`blip2plugins.index`, imported when needed (FAISS is an optional dependency)."""
    try:
        from . import index
    except ImportError as exc:
        click.echo(f"blip2: {exc}", err=True)
        sys.exit(1)
    return index


def _host(model: str, device: str, dtype: str) -> Host:
    """A host for ``model``'s retrieval model: a generation preset's companion loads alone."""
    preset = resolve(model)
    return cli_options.load_host(preset.retrieval if preset.kind == "generation" and preset.retrieval else model,
                      None, device, dtype, None)


def _index_model(index: ImageIndex) -> str:
    """The model that built ``index``, as ``Host.load`` takes it: its preset name, else where it was loaded from."""
    from .plugins import model_presets

    return index.model if index.model in model_presets() or not index.model_source else index.model_source


def _with_host(model: str, device: str, dtype: str, work: Callable[[Host], bool]) -> None:
    """Load the host, run ``work``, close the host; exit 1 when ``work`` reports a failure."""
    host = _host(model, device, dtype)
    try:
        ok = work(host)
    finally:
        host.close()
    if not ok:
        sys.exit(1)


def _show_progress(progress: bool | None, sources: tuple[str, ...]) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and (len(sources) > PROGRESS_THRESHOLD or any(os.path.isdir(s) for s in sources))


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _failures(report: IndexReport) -> None:
    for source, reason in report.failed:
        click.echo(f"blip2: {describe(source)}: {reason}", err=True)


def _report(path: Path, index: ImageIndex, report: IndexReport, as_json: bool) -> bool:
    """Print what was indexed (failures on stderr); True when nothing failed."""
    _failures(report)
    if as_json:
        click.echo(json.dumps({"index": str(path), "added": len(report.added), "replaced": len(report.replaced),
                               "failed": [{"source": printable(s, controls=False), "reason": r}
                                          for s, r in report.failed],
                               **index.metadata()}, ensure_ascii=False))
    else:
        click.echo(f"{path}: {_images(len(report.added))} indexed ({len(report.replaced)} replaced, "
                   f"{len(report.failed)} failed), {len(index)} in the index, model {index.model}")
    return not report.failed


@click.group("index")
def index_group() -> None:
    """Find images by text or by image: build, update and search an image index.

    A text query ranks images by ITC (the best cosine over the image's query embeddings, exactly
    what `blip2 match` prints as itc); an image query by the cosine of pooled image embeddings.
    """


@index_group.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--out", "-o", "out", type=index_path, required=True, help="Index file to write (replaced atomically).")
@click.option("--model", envvar="BLIP2_MODEL", show_envvar=True, metavar="NAME|PATH",
              help="Model whose retrieval head embeds the images.  [default: demo]")
@click.option("--kind", default="flat", show_default=True, metavar="flat|ivf-pq|hnsw|FACTORY",
              help="Text-search index: exact (flat), approximate for large collections (ivf-pq, hnsw), or a FAISS "
                   "index factory string.")
@click.option("--from-embeddings", is_flag=True,
              help="Each SOURCE is a folder or .parquet shard of `blip2 ray embed` output: index those embeddings "
                   "(no model loads).")
@device_options
@embed_options
def build(sources: tuple[str, ...], out: Path, model: str | None, kind: str, from_embeddings: bool, device: str,
          dtype: str, batch_size: int | None, progress: bool | None, as_json: bool) -> None:
    """Index the images of each SOURCE (a folder, searched recursively, or an image) into --out.

    An image that fails prints `blip2: SOURCE: reason` on stderr, the others are indexed, and the
    exit status is 1. Nothing is written when no image could be indexed.
    """
    index_module = _index()
    if from_embeddings:
        from .embedding_shards import build_from_shards

        with one_line_errors(Blip2Error, OSError):
            index, report = build_from_shards(sources, kind=kind)
            with index_module.locked(out):
                index.save(out)
        if not _report(out, index, report, as_json):
            sys.exit(1)
        return
    if not model:
        model = DEMO_MODEL
        click.echo(_DEMO_NOTE, err=True)

    def work(host: Host) -> bool:
        index, report = index_module.build_index(host, sources, batch_size=batch_size, kind=kind,
                                                 progress=_show_progress(progress, sources))
        if not len(index):
            _failures(report)
            click.echo(f"blip2: no image could be indexed; {out} was not written", err=True)
            return False
        with index_module.locked(out):  # not amid another command's update of the same file
            index.save(out)
        return _report(out, index, report, as_json)

    with one_line_errors(Blip2Error, OSError):
        _with_host(model, device, dtype, work)


@index_group.command()
@click.argument("index_file", metavar="INDEX", type=index_path)
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@index_model_option
@device_options
@embed_options
def add(index_file: Path, sources: tuple[str, ...], model: str | None, device: str, dtype: str,
        batch_size: int | None, progress: bool | None, as_json: bool) -> None:
    """Add the images of each SOURCE (folders or images) to INDEX; an image already there is re-embedded.

    Failures are reported as with `build`; INDEX is rewritten atomically with the rest.
    """
    index_module = _index()
    with one_line_errors(Blip2Error, OSError), index_module.locked(index_file):  # load, add, save: one update
        index = index_module.ImageIndex.load(index_file)

        def work(host: Host) -> bool:
            report = index_module.add_images(host, index, sources, batch_size=batch_size,
                                             progress=_show_progress(progress, sources))
            if report.added:
                index.save(index_file)
            return _report(index_file, index, report, as_json)

        _with_host(model or _index_model(index), device, dtype, work)


@index_group.command()
@click.argument("index_file", metavar="INDEX", type=index_path)
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@json_option
def remove(index_file: Path, sources: tuple[str, ...], as_json: bool) -> None:
    """Remove each SOURCE (as indexed, or a path relative to here) from INDEX.

    A SOURCE not in the index prints `blip2: SOURCE: not in the index` on stderr, the others are
    removed, and the exit status is 1.
    """
    index_module = _index()
    with one_line_errors(Blip2Error, OSError), index_module.locked(index_file):
        index = index_module.ImageIndex.load(index_file)
        found, unknown = [], []
        for source in sources:
            indexed = next((s for s in (source, os.path.abspath(source)) if s in index), None)
            if indexed is None:
                unknown.append(source)
            else:
                found.append(indexed)
        removed = index.remove(found)
        if removed:
            index.save(index_file)
    for source in unknown:
        click.echo(f"blip2: {describe(source)}: not in the index", err=True)
    if as_json:
        click.echo(json.dumps({"index": str(index_file), "removed": removed,
                               "unknown": [printable(source, controls=False) for source in unknown],
                               **index.metadata()}, ensure_ascii=False))
    else:
        click.echo(f"{index_file}: {_images(removed)} removed, {len(index)} in the index")
    if unknown:
        sys.exit(1)


@index_group.command("search")
@click.argument("index_file", metavar="INDEX", type=index_path)
@click.argument("query")
@click.option("-k", "k", type=_Count(), default=5, show_default=True, help="How many images.")
@click.option("--rerank", is_flag=True, help="Re-score the k images with the ITM head (text queries only).")
@click.option("--image/--text", "image", default=None,
              help="QUERY is an image / a text.  [default: an image when QUERY is an existing image file]")
@index_model_option
@device_options
@json_option
def search_command(index_file: Path, query: str, k: int, rerank: bool, image: bool | None, model: str | None,
                   device: str, dtype: str, as_json: bool) -> None:
    """Print the K images of INDEX that best match QUERY (a text or an image), best first.

    Lines are SCORE, a tab and the image; with --rerank, ITM probability, ITC score and the image.
    --json prints one object per image: rank, source, score (ITC for a text, cosine for an image),
    itm (with --rerank, else null), query, model, model_version.
    """
    index_module = _index()
    if image is None:
        image = os.path.isfile(query) and index_module.is_image_file(query)
    with one_line_errors(Blip2Error, OSError):
        index = index_module.ImageIndex.load(index_file)

        def work(host: Host) -> bool:
            hits = index_module.search(host, index, query, k=k, image=bool(image), rerank=rerank)
            for hit in hits:
                if as_json:
                    click.echo(json.dumps({"rank": hit.rank, "source": printable(hit.source, controls=False),
                                           "score": hit.score, "itm": hit.itm, "query": query, "model": index.model,
                                           "model_version": index.model_version}, ensure_ascii=False))
                elif rerank:
                    click.echo(f"{hit.itm:.4f}\t{hit.score:.4f}\t{printable(hit.source)}")
                else:
                    click.echo(f"{hit.score:.4f}\t{printable(hit.source)}")
            return True

        _with_host(model or _index_model(index), device, dtype, work)


@index_group.command()
@click.argument("index_file", metavar="INDEX", type=index_path)
@json_option
def info(index_file: Path, as_json: bool) -> None:
    """Show INDEX's model, sizes, image count and times."""
    index_module = _index()
    with one_line_errors(Blip2Error, OSError):
        index = index_module.ImageIndex.load(index_file)
        record: dict[str, Any] = {"index": str(index_file), "format_version": index_module.FORMAT_VERSION,
                                  "bytes": index_file.stat().st_size, **index.metadata()}
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False))
        return
    for key, value in record.items():
        click.echo(f"{key}: {value}")


@click.command()
@click.argument("image")
@click.argument("texts", nargs=-1, required=True, metavar="TEXT...")
@click.option("--model", envvar="BLIP2_MODEL", show_envvar=True, metavar="NAME|PATH",
              help="Model whose retrieval head scores the pairs.  [default: demo]")
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def match(image: str, texts: tuple[str, ...], model: str | None, device: str, dtype: str, as_json: bool) -> None:
    """Score how well each TEXT describes IMAGE.

    One line per text: the ITM match probability (in [0, 1]), the ITC score (a cosine in [-1, 1],
    for ranking, not a probability), a tab-separated TEXT. --json prints one object per text:
    image, text, itm, itc, model, model_version. A bad image prints `blip2: IMAGE: reason`, exit status 1.
    """
    if not model:
        model = DEMO_MODEL
        click.echo(_DEMO_NOTE, err=True)

    def work(host: Host) -> bool:
        probabilities = host.match(image, list(texts))
        scores = host.similarity(image, list(texts))[0].tolist()
        for text, probability, score in zip(texts, probabilities, scores):
            if as_json:
                click.echo(json.dumps({"image": printable(image, controls=False), "text": text, "itm": probability,
                                       "itc": score, "model": host.retrieval_name,
                                       "model_version": host.retrieval_version}, ensure_ascii=False))
            else:
                click.echo(f"{probability:.4f}\t{score:.4f}\t{one_line(text)}")
        return True

    with one_line_errors(Blip2Error, OSError):
        _with_host(model, device, dtype, work)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(index_group)
    cli.add_command(match)
