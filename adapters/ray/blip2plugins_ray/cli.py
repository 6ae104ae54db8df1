"""``blip2 ray caption|ask|embed``: one job over a whole collection, on a Ray cluster."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import click

from blip2plugins import cli_options
from blip2plugins.cli_options import (
    DEMO_MODEL,
    PathName,
    RealRange,
    WholeRange,
    generation_options,
    model_options,
    one_line_errors,
    options,
)
from blip2plugins.errors import Blip2Error

_SOURCES_HELP = """
SOURCE is an image (a path, a URL or any reference an image source plugin claims), a folder (its
images and .parquet/.jsonl shards, recursively), a .parquet or .jsonl shard with an `image` column
(references, relative to the shard's folder, or image bytes) or a URI of a filesystem pyarrow reads
(s3://, gs://, hdfs://...). Output: Parquet shards in --out with `image`, the result columns,
`score`, `model_version`, `error`, `seconds` (per image, amortised over its batch) and `node` (the
Ray node). Rerunning with the same --out resumes: the images it holds are skipped. A bad image, a
missing file or an unreadable shard is a row with `error`, never a failed job.
"""

job_options = options(
    click.argument("sources", nargs=-1, metavar="SOURCE..."),
    click.option("--files-from", type=click.File("r", encoding="utf-8"), metavar="FILE",
                 help="Also read sources from FILE, one per line ('-': stdin)."),
    click.option("--out", required=True, type=PathName(file_okay=False, path_type=Path),
                 help="Folder of the Parquet shards (created; a rerun resumes)."),
    click.option("--address", metavar="auto|ADDR",
                 help="Ray cluster to join: 'auto' (the one this machine belongs to) or its address. "
                      "Default: the running one (RAY_ADDRESS), else a local cluster on this machine."),
    click.option("--workers", type=WholeRange(1), default=1, show_default=True,
                 help="Actors, each loading the model once."),
    click.option("--gpus-per-worker", type=RealRange(0.0), default=0.0, show_default=True,
                 help="GPUs each actor takes (fractions share a GPU)."),
    click.option("--cpus-per-worker", type=RealRange(0.0, min_open=True), default=1.0, show_default=True,
                 help="CPUs each actor takes."),
    click.option("--batch-size", type=WholeRange(1), default=16, show_default=True,
                 help="Images per batch an actor's host gets."),
    click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    model_options,
)


@click.group()
def ray() -> None:
    """Caption, answer and embed whole image collections on a Ray cluster (Ray Data)."""


def _run(task: str, params: dict[str, Any], **task_options: Any) -> None:
    from .jobs import run

    files_from: IO[str] | None = params.pop("files_from")
    sources = params.pop("sources")
    if not sources and files_from is None:
        raise click.UsageError("no sources: give SOURCE arguments or --files-from FILE")
    model = params.pop("model") or DEMO_MODEL
    generation = cli_options.generation_values(params) if task != "embed" else {}
    if generation:
        cli_options.check_generation(model, generation)
    as_json = params.pop("as_json")
    lines = (line.rstrip("\r\n") for line in files_from) if files_from else ()
    # Ray prints its own messages on stdout: while it runs they go to stderr, so that stdout holds the
    # summary alone, printed once Ray has shut down.
    with one_line_errors(Blip2Error, OSError), contextlib.redirect_stdout(sys.stderr):
        try:
            summary = run(task, sources, params.pop("out"), files_from=(line for line in lines if line),
                          model=model, generation=generation or None, **task_options, **params)
        finally:
            _shutdown()
    click.echo(json.dumps(asdict(summary)) if as_json else summary.line())


def _shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@ray.command(epilog=_SOURCES_HELP)
@job_options
@click.option("--prompt", help="Text the captions start with (the model continues it).")
@generation_options
def caption(prompt: str | None, **params: Any) -> None:
    """Caption every image of SOURCE... into Parquet shards."""
    _run("caption", params, prompt=prompt)


@ray.command(epilog=_SOURCES_HELP)
@click.argument("question")
@job_options
@generation_options
def ask(question: str, **params: Any) -> None:
    """Answer QUESTION about every image of SOURCE... into Parquet shards."""
    _run("ask", params, question=question)


@ray.command(epilog=_SOURCES_HELP)
@job_options
def embed(**params: Any) -> None:
    """Embed every image of SOURCE... with the retrieval model (columns `queries`, Q x D flattened,
    and `pooled`, D) into Parquet shards; `blip2 index build OUT --from-embeddings` indexes them."""
    _run("embed", params)
