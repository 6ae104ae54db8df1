"""A persisted image index for BLIP-2 retrieval: find images by text (ITC) or by image (pooled cosine).

Search uses `FAISS <https://github.com/facebookresearch/faiss>`_ (``pip install 'blip2plugins[index]'``):
a well-kept library that keeps our ids and removes by id. By default the search is exhaustive and
exact (100k vectors of the demo's size: under a millisecond on one core); for large collections the
text-search side can be an approximate IVF-PQ or HNSW index, or any FAISS factory string
(:mod:`blip2plugins.index_kinds`), in the same file format.

Two FAISS indexes, one file:

- **text search** uses every per-query vector of every image (id ``image_id * Q + q``), so a
  text's score for an image is the maximum over the image's query vectors of the cosine: exactly the
  ITC score of :func:`blip2plugins.retrieval.itc` (:meth:`ImageIndex.search_vector`);
- **image search** uses one pooled vector per image (the normalised mean of its query vectors) and
  ranks by cosine (:meth:`ImageIndex.search_pooled`).

File format (version 1): ``MAGIC``, the format version (uint32), the header's length (uint64) and
its SHA-256, the header (UTF-8 JSON: model name and version, ``dim``, ``queries``, times, the
sources with their ids, the text-search index's FAISS ``factory`` string, and the payload's sizes and
SHA-256), then the payload: the two indexes as
``faiss.serialize_index`` writes them. FAISS's own format keeps the ids (and, for IVF or HNSW,
trained centroids or graphs) so loading rebuilds nothing, and FAISS keeps reading files of its older
versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import struct
import sys
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from . import index_kinds, jsonfile
from .errors import ImageError, IndexFileError, OptionError
from .files import exclusive_lock, remove_stale_temps, sibling, write_atomic
from .images import describe, expand_folders, is_image_file
from .types import ImageEmbedding

try:
    import faiss
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the image index needs FAISS: pip install 'blip2plugins[index]' (or faiss-cpu)") from exc

if TYPE_CHECKING:
    from .host import Host

__all__ = ["FORMAT_VERSION", "Hit", "ImageIndex", "IndexReport", "add_images", "build_index", "image_files",
           "is_image_file", "locked", "search"]

MAGIC = b"BLIP2IDX"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ32s")  # magic, format version, header length, header SHA-256
_MAX_DIM = 1 << 16  # dim and queries: ViT-g's Q-Former has 32 queries of 256
_MAX_ID = 1 << 40  # image ids: a vector id (image id * queries + q) must fit FAISS's int64


@dataclass
class Hit:
    """One search result: the image's ``source``, its ``score`` (ITC for a text query, cosine for an
    image query) and ``rank`` (1 = best). ``itm`` is the match probability after a rerank."""

    source: str
    score: float
    rank: int
    itm: float | None = None


@dataclass
class IndexReport:
    """What :func:`build_index` or :func:`add_images` did: the sources ``added`` (in order), those of
    them that ``replaced`` an entry already there, and the ``failed`` ones as ``(source, reason)``."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _flat(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on the calling thread alone (OpenMP's thread count is per thread: others keep theirs).

    One query over 100k vectors takes well under a millisecond on one core; spread over OpenMP
    threads it waits for cores that the host's model or other processes hold (24 ms p50 measured on
    a busy 2-core machine, against 0.6 ms on one thread).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of the index file at ``path`` (an ``fcntl`` lock on ``.NAME.lock`` beside it,
    as the adapter store locks itself; ``NAME`` is hashed when too long for a file name), waiting for it:
    take it around each load-modify-save so that concurrent updates all survive. Raises
    :class:`IndexFileError` when the lock file cannot be opened."""
    target = Path(path)
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(sibling(target, ".lock")))
        except OSError as exc:
            raise IndexFileError(f"index {target}: cannot lock: {exc.strerror or exc}") from None
        yield


class ImageIndex:
    """The embeddings of a set of images under one retrieval model, searchable by text or by image.

    Create one with :meth:`create` (or :func:`build_index`), fill it with :meth:`add`, persist it with
    :meth:`save` and :meth:`load`. Safe to share between threads; a search runs on its caller's thread.
    """

    def __init__(self, *, model: str, model_version: str, dim: int, queries: int, created: str, updated: str,
                 vectors: Any, pooled: Any, ids: dict[str, int], next_id: int, path: Path | None = None,
                 model_source: str = "", factory: str = "Flat") -> None:
        self.model = model
        self.model_version = model_version
        self.model_source = model_source  # where the model loads from (hub id or folder), when known
        self.dim = dim
        self.queries = queries
        self.created = created
        self.updated = updated
        self.factory = factory  # FAISS factory string of the per-query (text search) index
        self.path = path  # where it was loaded from or last saved to: named in error messages
        self._vectors = vectors  # per-query vectors, id image_id * queries + q
        self._pooled = pooled  # one pooled vector per image, id image_id
        self._ids = ids  # source -> image id
        self._sources = {image_id: source for source, image_id in ids.items()}
        self._next_id = next_id  # ids are never reused
        self._lock = threading.RLock()

    @classmethod
    def create(cls, model: str, model_version: str, dim: int, queries: int, *, model_source: str = "",
               factory: str = "Flat") -> ImageIndex:
        """An empty index for embeddings of ``model`` (``model_version``, loaded from ``model_source``):
        ``queries`` vectors of ``dim`` per image, searched by text in a FAISS index of ``factory``
        (:func:`blip2plugins.index_kinds.factory_for` makes one; an approximate kind must be
        :meth:`train`-ed before the first :meth:`add`)."""
        if dim < 1 or queries < 1:
            raise OptionError(f"an index needs dim >= 1 and queries >= 1, got dim={dim}, queries={queries}")
        now = _now()
        return cls(model=model, model_version=model_version, dim=dim, queries=queries, created=now, updated=now,
                   vectors=index_kinds.make(dim, factory), pooled=_flat(dim), ids={}, next_id=0,
                   model_source=model_source, factory=factory)

    # -- contents ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, source: object) -> bool:
        return source in self._ids

    @property
    def sources(self) -> list[str]:
        """The indexed sources, oldest first (a re-added source counts as new)."""
        with self._lock:
            return list(self._ids)

    def metadata(self) -> dict[str, Any]:
        """Model name, version and source, ``dim``, ``queries``, ``count``, ``created`` and ``updated`` (ISO 8601 UTC)."""
        return {"model": self.model, "model_version": self.model_version, "model_source": self.model_source,
                "dim": self.dim, "queries": self.queries, "factory": self.factory,
                "count": len(self), "created": self.created, "updated": self.updated}

    @property
    def training_size(self) -> int:
        """How many per-query vectors :meth:`train` wants before the first add (0: none)."""
        return index_kinds.training_size(self._vectors)

    def train(self, vectors: Any) -> None:
        """Train an approximate text-search index on a sample of per-query vectors ``(n, dim)``."""
        sample = _array(vectors, "the training vectors")
        if sample.ndim != 2 or sample.shape[1] != self.dim:
            raise IndexFileError(f"training vectors have shape {tuple(sample.shape)}, expected (n, {self.dim})")
        with self._lock:
            try:
                self._vectors.train(sample)
            except RuntimeError as exc:  # FAISS: too few vectors for its cells or codebooks
                raise IndexFileError(f"a {self.factory} index cannot be trained on {len(sample)} vectors "
                                     f"({' '.join(str(exc).split())[:160]}); for a small collection use the flat "
                                     "kind") from None

    def check_model(self, model: str, model_version: str) -> None:
        """Refuse embeddings of another model (or another version of it): they are not comparable."""
        if model_version != self.model_version:
            raise IndexFileError(
                f"{self._label()} was built by model {self.model!r} ({self.model_version}), not by {model!r} "
                f"({model_version}): embeddings of different models are not comparable; use model "
                f"{self.model!r} or rebuild the index with {model!r}"
            )

    def add(self, embeddings: Sequence[ImageEmbedding]) -> None:
        """Index image embeddings by their ``source``; a source already indexed is replaced.

        All or nothing: a failed embedding, one without a source, of another model or of the wrong
        shape raises :class:`IndexFileError` and nothing is added.
        """
        latest: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for embedding in embeddings:
            source = self._checked_source(embedding)
            latest[source] = self._arrays(embedding)
        if not latest:
            return
        if not self._vectors.is_trained:
            raise IndexFileError(f"{self._label()} ({self.factory}) must be trained on a sample of vectors before "
                                 "images are added")
        with self._lock:
            self._drop([source for source in latest if source in self._ids])
            first = self._next_id
            image_ids = np.arange(first, first + len(latest), dtype=np.int64)
            vector_ids = (image_ids[:, None] * self.queries + np.arange(self.queries, dtype=np.int64)).reshape(-1)
            self._vectors.add_with_ids(np.concatenate([q for q, _ in latest.values()]), vector_ids)
            self._pooled.add_with_ids(np.stack([p for _, p in latest.values()]), image_ids)
            for source, image_id in zip(latest, image_ids.tolist()):
                self._ids[source] = image_id
                self._sources[image_id] = source
            self._next_id = first + len(latest)
            self.updated = _now()

    def remove(self, sources: Iterable[str]) -> int:
        """Remove indexed sources (one string counts as one source); returns how many. Unknown sources
        raise :class:`IndexFileError` naming them, and then nothing is removed."""
        given = [sources] if isinstance(sources, str) else list(sources)
        odd = [source for source in given if not isinstance(source, str)]
        if odd:
            raise IndexFileError(f"sources to remove are strings, got {type(odd[0]).__name__}")
        wanted = list(dict.fromkeys(given))
        with self._lock:
            unknown = [source for source in wanted if source not in self._ids]
            if unknown:
                more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
                raise IndexFileError(f"{self._label()} does not hold {', '.join(_quoted(s) for s in unknown[:3])}{more}")
            self._drop(wanted)
            if wanted:
                self.updated = _now()
        return len(wanted)

    # -- search -----------------------------------------------------------------------------------

    def search_vector(self, vector: Any, k: int = 5) -> list[Hit]:
        """The ``k`` images with the highest ITC score for a text embedding ``(D,)``: exact, best first."""
        query = self._query(vector, "text embedding")
        with self._lock:
            take = self._take(k)
            # An image's Q vectors fill at most Q of the top k*Q slots, so those slots span at least k
            # images; and an image whose best vector is not among them scores below k images that
            # are (ties aside). So each image's first (best) vector found is its exact ITC score, and
            # the first k images found are the exact top k.
            with _one_thread():
                scores, ids = self._vectors.search(query, min(take * self.queries, self._vectors.ntotal))
            best: dict[int, float] = {}
            for score, vector_id in zip(scores[0].tolist(), ids[0].tolist()):
                best.setdefault(vector_id // self.queries, score)
            return self._hits(list(best.items())[:take])

    def search_pooled(self, vector: Any, k: int = 5) -> list[Hit]:
        """The ``k`` images whose pooled embedding has the highest cosine with ``vector`` ``(D,)``, best first."""
        query = self._query(vector, "image embedding")
        with self._lock:
            take = self._take(k)
            with _one_thread():
                scores, ids = self._pooled.search(query, take)
            return self._hits(list(zip(ids[0].tolist(), scores[0].tolist())))

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` atomically: the file is replaced whole or left as it was. The
        temporary files of earlier writes of ``path`` killed midway are removed first."""
        target = Path(path)
        with self._lock:
            vectors = faiss.serialize_index(self._vectors).tobytes()
            pooled = faiss.serialize_index(self._pooled).tobytes()
            payload = vectors + pooled
            header = json.dumps({
                **self.metadata(), "next_id": self._next_id, "sources": list(self._ids),
                "ids": list(self._ids.values()),
                "payload": {"vectors": len(vectors), "pooled": len(pooled), "sha256": hashlib.sha256(payload).hexdigest()},
            }).encode()  # ASCII: paths that are not valid UTF-8 (surrogate escapes) survive the round trip
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), hashlib.sha256(header).digest())
        try:
            remove_stale_temps(target)
            write_atomic(target, prefix + header + payload)
        except OSError as exc:
            raise IndexFileError(f"cannot write index {target}: {exc.strerror or exc}") from exc
        self.path = target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageIndex:
        """Read an index written by :meth:`save`; a missing, foreign, truncated or corrupt file raises
        :class:`IndexFileError` saying which."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
            try:
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    raise IndexFileError(f"index {target}: is a directory, not an index file")
                if not stat.S_ISREG(mode):
                    raise IndexFileError(f"index {target}: not a regular file (a FIFO or a device)")
                with open(fd, "rb", closefd=False) as handle:
                    data = handle.read()
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise IndexFileError(f"index {target}: no such file") from None
        except OSError as exc:
            raise IndexFileError(f"index {target}: cannot read: {exc.strerror or exc}") from None
        return cls._parse(data, target)

    @classmethod
    def _parse(cls, data: bytes, path: Path) -> ImageIndex:
        def fail(reason: str) -> IndexFileError:
            return IndexFileError(f"index {path}: {reason}")

        if not data:
            raise fail("empty file, not an index")
        if not data.startswith(MAGIC) and not MAGIC.startswith(data):
            raise fail("not an index file (it does not start with the blip2plugins index signature)")
        if len(data) < _PREFIX.size:
            raise fail(f"truncated ({len(data)} bytes, shorter than the file's fixed header)")
        _, version, header_size, header_digest = _PREFIX.unpack_from(data)
        if version != FORMAT_VERSION:
            raise fail(f"unsupported format version {version} (this blip2plugins reads version {FORMAT_VERSION}"
                       f"{'; upgrade blip2plugins' if version > FORMAT_VERSION else ''})")
        header_end = _PREFIX.size + header_size
        if len(data) < header_end:
            raise fail(f"truncated ({len(data)} bytes, the header alone needs {header_end})")
        header_bytes = data[_PREFIX.size:header_end]
        if hashlib.sha256(header_bytes).digest() != header_digest:
            raise fail("corrupt (the header's checksum does not match)")
        try:
            header = _read_header(header_bytes)
        except jsonfile.JSONReadError as exc:
            raise fail(f"corrupt header: {exc}") from None
        problem = _header_problem(header)
        if problem:
            raise fail(f"corrupt header: {problem}")
        sizes = header["payload"]
        expected = header_end + sizes["vectors"] + sizes["pooled"]
        if len(data) < expected:
            raise fail(f"truncated ({len(data)} bytes, expected {expected})")
        if len(data) > expected:
            raise fail(f"corrupt ({len(data) - expected} unexpected bytes after the payload)")
        payload = memoryview(data)[header_end:]
        if hashlib.sha256(payload).hexdigest() != sizes["sha256"]:
            raise fail("corrupt (the payload's checksum does not match)")
        try:
            vectors = faiss.deserialize_index(np.frombuffer(payload[:sizes["vectors"]], dtype=np.uint8))
            pooled = faiss.deserialize_index(np.frombuffer(payload[sizes["vectors"]:], dtype=np.uint8))
            index = cls(model=header["model"], model_version=header["model_version"], dim=header["dim"],
                        queries=header["queries"], created=header["created"], updated=header["updated"],
                        vectors=vectors, pooled=pooled, ids=dict(zip(header["sources"], header["ids"])),
                        next_id=header["next_id"], path=path, model_source=header.get("model_source", ""),
                        factory=header.get("factory", "Flat"))
        except RuntimeError as exc:  # FAISS's errors
            raise fail(f"corrupt: {' '.join(str(exc).split())[:300]}") from None
        problem = index._inconsistency(len(header["sources"]), len(header["ids"]))
        if problem:
            raise fail(f"corrupt ({problem})")
        return index

    def _inconsistency(self, sources: int, ids: int) -> str | None:
        """What does not add up between the header and the FAISS indexes, if anything."""
        count, q = len(self._ids), self.queries
        if not (sources == ids == count == len(self._sources)):
            return "the header's sources and ids do not pair up"
        for name, index, rows in (("per-query", self._vectors, count * q), ("pooled", self._pooled, count)):
            if index.d != self.dim or index.ntotal != rows:
                return f"the {name} index holds {index.ntotal} vectors of {index.d}, expected {rows} of {self.dim}"
        image_ids = np.array(sorted(self._sources), dtype=np.int64)
        if not np.array_equal(np.sort(faiss.vector_to_array(self._pooled.id_map)), image_ids):
            return "the pooled index's ids are not the header's"
        expected = (image_ids[:, None] * q + np.arange(q, dtype=np.int64)).reshape(-1)
        if not np.array_equal(np.sort(faiss.vector_to_array(self._vectors.id_map)), expected):
            return "the per-query index's ids are not the header's"
        return None

    # -- helpers ----------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"index {self.path}" if self.path else "the index"

    def _checked_source(self, embedding: ImageEmbedding) -> str:
        if not embedding.ok:
            raise IndexFileError(f"cannot index {embedding.source}: its embedding failed: {embedding.error}")
        if not embedding.source or not isinstance(embedding.source, str):
            raise IndexFileError("cannot index an embedding without a source (give images by path or URL)")
        self.check_model(embedding.model, embedding.model_version)
        return embedding.source

    def _arrays(self, embedding: ImageEmbedding) -> tuple[np.ndarray, np.ndarray]:
        queries = _array(embedding.queries, f"the embedding of {embedding.source}")
        pooled = _array(embedding.pooled, f"the pooled embedding of {embedding.source}")
        if queries.shape != (self.queries, self.dim) or pooled.shape != (self.dim,):
            raise IndexFileError(
                f"cannot index {embedding.source}: embedding shapes {queries.shape} and {pooled.shape}, "
                f"the index holds ({self.queries}, {self.dim}) and ({self.dim},)"
            )
        if not (np.isfinite(queries).all() and np.isfinite(pooled).all()):
            raise IndexFileError(f"cannot index {embedding.source}: its embedding is not finite")
        return queries, pooled

    def _drop(self, sources: list[str]) -> None:
        if not sources:
            return
        image_ids = np.array([self._ids[source] for source in sources], dtype=np.int64)
        try:
            self._vectors.remove_ids((image_ids[:, None] * self.queries + np.arange(self.queries, dtype=np.int64)).reshape(-1))
        except RuntimeError:  # FAISS: this kind cannot remove (HNSW); nothing was removed
            raise IndexFileError(f"{self._label()} ({self.factory}) cannot remove or replace images: rebuild it "
                                 "without them") from None
        self._pooled.remove_ids(image_ids)
        for source, image_id in zip(sources, image_ids.tolist()):
            del self._ids[source], self._sources[image_id]

    def _query(self, vector: Any, what: str) -> np.ndarray:
        query = _array(vector, f"the {what}")
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.shape != (self.dim,):
            raise IndexFileError(
                f"the {what} has shape {tuple(query.shape)}, but {self._label()} holds vectors of dimension "
                f"{self.dim} (model {self.model!r}, {self.model_version})"
            )
        if not np.isfinite(query).all():
            raise IndexFileError(f"the {what} is not finite")
        return query[None, :]

    def _take(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            shown = "a huge negative integer" if isinstance(k, int) and k < -(10**100) else repr(k)[:60]
            raise OptionError(f"k must be a positive integer, got {shown}")
        if not self._ids:
            raise IndexFileError(f"{self._label()} is empty: add images before searching")
        return min(k, len(self._ids))

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        return [Hit(self._sources[image_id], float(score), rank) for rank, (image_id, score) in enumerate(ranked, 1)]


def _array(value: Any, what: str) -> np.ndarray:
    """A float32, C-contiguous array from a tensor (any device and dtype) or an array-like."""
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed here
        value = value.detach().float().cpu().numpy()
    try:
        return np.ascontiguousarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise IndexFileError(f"{what} is not an array of numbers ({type(value).__name__})") from None


def _quoted(source: str) -> str:
    return repr(source) if len(source) <= 200 else f"{source[:200]!r}... ({len(source):,} characters)"


def _read_header(data: bytes) -> Any:
    """The header's JSON, checked by :mod:`jsonfile` (nesting, numbers, UTF-8); file names that are not
    UTF-8 are written as lone ``\\udcXX`` escapes (Python's surrogateescape), so those are let through."""
    return jsonfile.loads(data, surrogates=True)


def _header_problem(header: Any) -> str | None:
    """What is wrong with the types or ranges of an index header's fields, if anything."""
    if not isinstance(header, dict):
        return "not a JSON object"
    for key in ("model", "model_version", "created", "updated"):
        if not isinstance(header.get(key), str):
            return f"{key!r} is not a string"
    for key in ("model_source", "factory"):
        if not isinstance(header.get(key, ""), str):
            return f"{key!r} is not a string"
    for key in ("dim", "queries"):
        if not _whole(header.get(key), 1, _MAX_DIM):
            return f"{key!r} is not a whole number from 1 to {_MAX_DIM:,}"
    if not _whole(header.get("next_id"), 0, _MAX_ID):
        return f"'next_id' is not a whole number from 0 to {_MAX_ID:,}"
    sources, ids = header.get("sources"), header.get("ids")
    if not isinstance(sources, list) or not all(isinstance(source, str) and source for source in sources):
        return "'sources' is not a list of non-empty strings"
    if not isinstance(ids, list) or not all(_whole(image_id, 0, header["next_id"] - 1) for image_id in ids):
        return "'ids' is not a list of whole numbers below 'next_id'"
    sizes = header.get("payload")
    if not isinstance(sizes, dict) or not all(_whole(sizes.get(key), 0, 1 << 62) for key in ("vectors", "pooled")) \
            or not isinstance(sizes.get("sha256"), str):
        return "'payload' does not give the sizes and SHA-256 of the two indexes"
    return None


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# -- with a host ----------------------------------------------------------------------------------


def image_files(sources: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand folders (recursively, image files only, sorted) and keep other references as given.

    Existing local files become absolute paths, so an index works from any folder. Returns the image
    references without duplicates, and ``(folder, reason)`` for folders without image files.
    """
    refs, empty = expand_folders(sources)
    return list(dict.fromkeys(os.path.abspath(ref) if os.path.isfile(ref) else ref for ref in refs)), empty


def build_index(host: Host, sources: Iterable[str], *, batch_size: int | None = None, kind: str = "flat",
                progress: bool = True) -> tuple[ImageIndex, IndexReport]:
    """Index the images of ``sources`` (folders, walked recursively, and image references) with the
    host's retrieval model, in an index of ``kind`` (see :mod:`blip2plugins.index_kinds`). Bad or
    missing images are reported in the :class:`IndexReport`, the others indexed. An approximate kind
    is trained on the images' own vectors, so it embeds them all before adding any."""
    if kind != "flat":
        refs, failed = image_files(sources)
        embedded = [e for _, chunk in _embedded(host, refs, batch_size or host.max_batch_size) for e in chunk]
        sample = np.concatenate([_array(e.queries, "an embedding") for e in embedded if e.ok] or
                                [np.zeros((0, host.embedding_dim), np.float32)])
        index = ImageIndex.create(host.retrieval_name, host.retrieval_version, host.embedding_dim,
                                  host.num_query_tokens, model_source=host.retrieval_source,
                                  factory=index_kinds.factory_for(kind, host.embedding_dim, len(sample)))
        if index.training_size:
            index.train(sample)
        report = IndexReport(failed=failed)
        good = [dataclasses.replace(e, source=ref) for ref, e in zip(refs, embedded) if e.ok]
        report.failed += [(ref, (e.error or "failed").removeprefix(f"{describe(ref)}: "))
                          for ref, e in zip(refs, embedded) if not e.ok]
        index.add(good)
        report.added += [ref for ref, e in zip(refs, embedded) if e.ok]
        return index, report
    index = ImageIndex.create(host.retrieval_name, host.retrieval_version, host.embedding_dim, host.num_query_tokens,
                              model_source=host.retrieval_source)
    return index, add_images(host, index, sources, batch_size=batch_size, progress=progress)


def add_images(host: Host, index: ImageIndex, sources: Iterable[str], *, batch_size: int | None = None,
               progress: bool = True) -> IndexReport:
    """Embed the images of ``sources`` (as in :func:`build_index`) and add them to ``index``, replacing
    sources already there. Raises :class:`IndexFileError` when the host's retrieval model is not the
    index's."""
    index.check_model(host.retrieval_name, host.retrieval_version)
    refs, failed = image_files(sources)
    report = IndexReport(failed=failed)
    with tqdm(total=len(refs), unit="image", desc="index", file=sys.stderr, disable=not progress, leave=False) as bar:
        for chunk, embeddings in _embedded(host, refs, batch_size or host.max_batch_size):
            good = []
            for ref, embedding in zip(chunk, embeddings):
                if embedding.ok:
                    good.append(dataclasses.replace(embedding, source=ref))
                else:
                    report.failed.append((ref, (embedding.error or "failed").removeprefix(f"{describe(ref)}: ")))
            report.replaced += [e.source for e in good if e.source in index]  # type: ignore[misc]
            index.add(good)
            report.added += [e.source for e in good]  # type: ignore[misc]
            bar.update(len(chunk))
    return report


def _embedded(host: Host, refs: list[str], size: int) -> Iterator[tuple[list[str], list[ImageEmbedding]]]:
    """Embed ``refs`` in order, ``size`` at a time (the host reads the next chunk while it embeds this one)."""
    embeddings = host.iter_embeddings(refs)
    for start in range(0, len(refs), size):
        chunk = refs[start:start + size]
        yield chunk, list(islice(embeddings, len(chunk)))


def search(host: Host, index: ImageIndex, query: Any, *, k: int = 5, image: bool = False,
           rerank: bool = False) -> list[Hit]:
    """The ``k`` best images of ``index`` for a text ``query`` (ITC), or an image one (``image=True``:
    cosine of pooled embeddings).

    ``rerank=True`` (text queries only) scores those ``k`` images against the text with the ITM head
    (``host.match``, reading the indexed files again) and orders them by that probability, in
    ``Hit.itm``; ``Hit.score`` keeps the ITC score.
    """
    if rerank and image:
        raise OptionError("rerank works on text queries only: the ITM head scores an image against a text")
    index.check_model(host.retrieval_name, host.retrieval_version)
    if image:
        return index.search_pooled(host.embed_images(query).pooled, k)
    hits = index.search_vector(host.embed_texts(query), k)
    if not rerank:
        return hits
    try:
        probabilities = host.match([hit.source for hit in hits], query)
    except ImageError as exc:
        raise ImageError(exc.source, f"{exc.reason} (an indexed image cannot be read again for the rerank: remove "
                                     "it from the index or restore the file)") from None
    for hit, probability in zip(hits, probabilities):
        hit.itm = float(probability)
    hits.sort(key=lambda hit: -(hit.itm or 0.0))  # stable: ties keep their ITC order
    for rank, hit in enumerate(hits, 1):
        hit.rank = rank
    return hits
