"""Image embeddings stored as Parquet shards, as ``blip2 ray embed`` writes them, and an index built
from them without loading a model.

A shard has the columns ``image``, ``queries`` (Q x D floats, row-major), ``pooled`` (D floats),
``model``, ``model_source``, ``model_version`` and ``error``. Rows with an error are reported, not
indexed; an image that appears twice is indexed once (its first row). Reading needs pyarrow.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import IndexFileError
from .images import short_reason
from .index import ImageIndex, IndexReport
from .index_kinds import factory_for
from .types import ImageEmbedding

#: Columns every shard must have.
COLUMNS = ("image", "queries", "pooled", "model", "model_source", "model_version", "error")
#: Rows added to the index at a time.
CHUNK = 8192


def shard_files(sources: Iterable[str]) -> list[str]:
    """The ``.parquet`` files of ``sources`` (files, or folders searched recursively), sorted within a folder."""
    found: list[str] = []
    for source in sources:
        if os.path.isdir(source):
            found += sorted(str(path) for path in Path(source).rglob("*.parquet"))
        elif os.path.isfile(source):
            found.append(source)
        else:
            raise IndexFileError(f"embeddings {source!r}: no such file or folder")
    if not found:
        raise IndexFileError(f"no .parquet shards in {', '.join(map(repr, sources))}")
    return found


def _read(path: str, columns: list[str]) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise IndexFileError("reading embedding shards needs pyarrow: pip install 'blip2plugins[index]'") from None
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:
        raise IndexFileError(f"embeddings {path}: unreadable Parquet: {short_reason(exc)}") from None
    return table


def _matrix(column: Any, width: int, path: str, name: str) -> np.ndarray:
    """A fixed-size list column as a float32 ``(rows, width)`` array."""
    values = column.combine_chunks()
    if values.null_count or len(values) and len(values.flatten()) != len(values) * width:
        raise IndexFileError(f"embeddings {path}: column {name!r} does not hold {width} numbers in every row")
    return np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(values), width)


def build_from_shards(sources: Iterable[str], *, kind: str = "flat", seed: int = 0) -> tuple[ImageIndex, IndexReport]:
    """An index of the embeddings in the Parquet shards of ``sources``, of ``kind`` (a name of
    :data:`~blip2plugins.index_kinds.KINDS` or a FAISS factory string); an approximate kind is
    trained on a seeded sample of the vectors first."""
    paths = shard_files(list(sources))
    report = IndexReport()
    keep: list[list[int]] = []  # per shard: the rows to index
    seen: set[str] = set()
    meta: tuple[str, str, str] | None = None
    for path in paths:
        table = _read(path, [name for name in COLUMNS if name not in ("queries", "pooled")])
        rows = []
        for row, (image, model, source, version, error) in enumerate(zip(*(table.column(name).to_pylist() for name in
                                                                          ("image", "model", "model_source",
                                                                           "model_version", "error")))):
            if error is not None:
                report.failed.append((image, error))
                continue
            if meta is None:
                meta = (model, source, version)
            elif version != meta[2]:
                raise IndexFileError(f"embeddings {path}: {image!r} was embedded by {model} ({version}), the "
                                     f"others by {meta[0]} ({meta[2]}): embeddings of different models are not comparable")
            if image not in seen:
                seen.add(image)
                rows.append(row)
        keep.append(rows)
    if meta is None:
        raise IndexFileError("the shards hold no embedding without an error")
    first = next(path for path, rows in zip(paths, keep) if rows)
    probe = _read(first, ["queries", "pooled"]).slice(0, 1)
    dim = probe.column("pooled").type.list_size
    queries = probe.column("queries").type.list_size // max(dim, 1)
    if dim < 1 or queries * dim != probe.column("queries").type.list_size:
        raise IndexFileError(f"embeddings {first}: 'queries' is not a whole number of {dim}-float vectors")
    model, model_source, version = meta
    index = ImageIndex.create(model, version, dim, queries, model_source=model_source,
                              factory=factory_for(kind, dim, len(seen) * queries))
    if index.training_size:
        index.train(_sample(paths, keep, index.training_size, queries, dim, seed))
    for path, rows in zip(paths, keep):
        for embeddings in _embeddings(path, rows, queries, dim, model, version):
            index.add(embeddings)
            report.added += [embedding.source for embedding in embeddings]  # type: ignore[misc]
    return index, report


def _embeddings(path: str, rows: list[int], queries: int, dim: int, model: str,
                version: str) -> Iterator[list[ImageEmbedding]]:
    if not rows:
        return
    table = _read(path, ["image", "queries", "pooled"]).take(rows)
    for start in range(0, len(rows), CHUNK):
        part = table.slice(start, CHUNK)
        vectors = _matrix(part.column("queries"), queries * dim, path, "queries").reshape(-1, queries, dim)
        pooled = _matrix(part.column("pooled"), dim, path, "pooled")
        yield [ImageEmbedding(q, p, model, version, source=image)
               for image, q, p in zip(part.column("image").to_pylist(), vectors, pooled)]


def _sample(paths: list[str], keep: list[list[int]], size: int, queries: int, dim: int, seed: int) -> np.ndarray:
    """About ``size`` per-query vectors of rows drawn at random (seeded) from every shard."""
    total = sum(map(len, keep))
    wanted = min(total, -(-size // queries))
    chosen = set(random.Random(seed).sample(range(total), wanted))
    parts, offset = [], 0
    for path, rows in zip(paths, keep):
        picked = [row for number, row in enumerate(rows, offset) if number in chosen]
        offset += len(rows)
        if picked:
            column = _read(path, ["queries"]).take(picked).column("queries")
            parts.append(_matrix(column, queries * dim, path, "queries").reshape(-1, dim))
    return np.concatenate(parts)
