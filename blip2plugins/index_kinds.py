"""Which FAISS index holds an image index's per-query vectors (the text-search side).

``flat`` is exact: every vector kept in float32 (32 queries x 256 x 4 bytes = 32 KB an image at
real size, 3.3 GB per 100k images). For large collections two approximate kinds trade a little
recall for memory and speed (``benchmarks/index_scale.py`` measures them; the figures are in the
retrieval docs):

- ``ivf-pq``: an inverted file of ``nlist`` k-means cells, each vector product-quantized to
  ``dim / 2`` 4-bit codes (FAISS's fast scan); a query scans the ``nprobe`` nearest cells and
  re-ranks :data:`K_FACTOR` times the candidates it needs on one byte a dimension (``Refine(SQ8)``):
  about a third of the flat index's memory;
- ``hnsw``: a graph (32 links a node) over vectors quantized to one byte a dimension.

Any other `FAISS index factory <https://github.com/facebookresearch/faiss/wiki/The-index-factory>`_
string is accepted too. Kinds that quantize need training on a sample of the vectors before the
first add. The image-search (pooled) side stays exact: one vector an image, 1/Q of the other.
"""

from __future__ import annotations

import math
from typing import Any

import faiss

from .errors import OptionError

#: Named kinds -> FAISS factory string (``{nlist}`` and ``{m}`` are chosen for the collection's size).
KINDS = {"flat": "Flat", "ivf-pq": "IVF{nlist},PQ{m}x4fs,Refine(SQ8)", "hnsw": "HNSW32,SQ8"}
#: Fraction of an IVF index's cells a query scans, and the fewest it scans.
NPROBE_SHARE, MIN_NPROBE = 1 / 4, 16
#: Candidates a refining index re-ranks, per result asked for.
K_FACTOR = 4
#: Candidates an HNSW search keeps (``efSearch``, at least; a text search asks for k x Q vectors) and
#: those its construction keeps (``efConstruction``).
EF_SEARCH, EF_CONSTRUCTION = 512, 80


def factory_for(kind: str, dim: int, vectors: int) -> str:
    """The FAISS factory string of ``kind`` (a name of :data:`KINDS` or a factory string) for about
    ``vectors`` vectors of ``dim``."""
    if kind not in KINDS:
        return kind
    # About sqrt(vectors) cells: FAISS suggests up to 16 times more for speed, but training costs
    # grow with the square of the cells (minutes on 2 cores at 2,048 cells).
    nlist = 2 ** round(math.log2(max(16.0, math.sqrt(max(vectors, 1)))))
    nlist = max(16, min(nlist, 65536, 2 ** int(math.log2(max(vectors // 39, 16)))))
    m = dim // 2 if dim % 2 == 0 else dim
    return KINDS[kind].format(nlist=nlist, m=m)


def make(dim: int, factory: str) -> Any:
    """An empty index of ``factory`` (inner product) that keeps the ids it is given, tuned for search
    (see :func:`tune`); raises :class:`OptionError` for a factory string FAISS refuses."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise OptionError(f"FAISS cannot build an index {factory!r} of dimension {dim}: "
                          f"{' '.join(str(exc).split())[:200]}") from None
    tune(inner)
    return faiss.IndexIDMap2(inner)


def tune(index: Any) -> None:
    """Settings the index file keeps: an IVF index scans :data:`NPROBE_SHARE` of its cells (at
    least :data:`MIN_NPROBE`), a refining index re-ranks :data:`K_FACTOR` times the candidates, an
    HNSW index builds and searches with :data:`EF_CONSTRUCTION` and :data:`EF_SEARCH` candidates."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(MIN_NPROBE, int(ivf.nlist * NPROBE_SHARE)))
    hnsw = faiss.downcast_index(index)
    if hasattr(hnsw, "k_factor"):
        hnsw.k_factor = K_FACTOR
    if hasattr(hnsw, "hnsw"):
        hnsw.hnsw.efSearch, hnsw.hnsw.efConstruction = EF_SEARCH, EF_CONSTRUCTION


def training_size(index: Any) -> int:
    """How many vectors to train ``index`` on: 64 per IVF cell (FAISS asks for 39 to 256), or 65,536
    for quantizers alone; 0 when it needs no training."""
    if index.is_trained:
        return 0
    try:
        return 64 * faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return 65536
