"""Search latency over an index of 100k vectors: FAISS search alone and a text query end to end.

The index holds synthetic random unit vectors (not embeddings of real images: exhaustive search
costs the same whatever the vectors) with the retrieval model's D and Q (or ``--dim`` /
``--query-tokens``, e.g. 256 / 32 as in the real BLIP-2 checkpoints): 100k per-query vectors are
100k / Q images. Timed one query at a time: ``index.search_vector(text_vector, k)`` (the top k*Q
vectors, grouped by image), ``index.search_pooled`` (image query), and ``search(host, index, text)``
(embed the text with the host, then search). Prints p50 / p95 and the index file's size per 1,000
images. Goal: FAISS search p95 <= 5 ms on 2 threads (ratio = 5 ms / p95, goal >= 1x).

    python benchmarks/index_search.py [--quick] [--model demo] [--vectors 100000] [--queries-timed 1000] [-k 5]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import _common as c
import torch
from index_build import load_retrieval_host
from torch.nn import functional as F

GOAL_MS = 5.0
TEXTS = ["a red circle", "a green triangle and a blue square", "two yellow squares", "a blue circle on gray",
         "three shapes", "a red triangle and a green circle"]


def latencies(fn: Callable[[int], Any], count: int) -> list[float]:
    """Milliseconds of ``fn(i)`` for i in range(count), after a warm-up."""
    for i in range(min(10, count)):
        fn(i)
    out = []
    for i in range(count):
        start = time.perf_counter()
        fn(i)
        out.append(1000 * (time.perf_counter() - start))
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--vectors", type=int, default=100_000, help="per-query vectors in the index (default 100000)")
    p.add_argument("--queries-timed", type=int, default=None, help="timed queries per arm (default 1000, --quick 100)")
    p.add_argument("-k", type=int, default=5, help="images per query (default 5)")
    p.add_argument("--dim", type=int, help="embedding size D (default: the model's)")
    p.add_argument("--query-tokens", type=int, help="query vectors per image Q (default: the model's)")
    args = p.parse_args()
    timed = args.queries_timed or (100 if args.quick else 1000)
    c.setup(args, f"index search: {args.vectors} vectors, k={args.k}, {timed} queries per arm")

    import faiss

    from blip2plugins.index import ImageIndex, search
    from blip2plugins.types import ImageEmbedding

    host = load_retrieval_host(args)
    dim, q = args.dim or host.embedding_dim, args.query_tokens or host.num_query_tokens
    same_model = (dim, q) == (host.embedding_dim, host.num_query_tokens)
    images = args.vectors // q
    generator = torch.Generator().manual_seed(args.seed)
    index = ImageIndex.create(host.retrieval_name, host.retrieval_version, dim, q)
    for start in range(0, images, 4096):
        queries = F.normalize(torch.randn(min(4096, images - start), q, dim, generator=generator), dim=-1)
        pooled = F.normalize(queries.mean(dim=1), dim=-1)
        index.add([ImageEmbedding(qs, ps, host.retrieval_name, host.retrieval_version,
                                  source=f"/photos/{start + i:07d}.png")
                   for i, (qs, ps) in enumerate(zip(queries, pooled))])
    print(f"index: {images} images x Q={q} = {images * q} vectors of D={dim} (synthetic unit vectors), "
          f"faiss {faiss.__version__} (a search runs on its caller's thread alone, see blip2plugins.index)")
    texts = F.normalize(torch.randn(timed, dim, generator=generator), dim=-1)

    rows = [
        ["search_vector (text, FAISS)", latencies(lambda i: index.search_vector(texts[i], args.k), timed)],
        ["search_pooled (image, FAISS)", latencies(lambda i: index.search_pooled(texts[i], args.k), timed)],
    ]
    if same_model:
        rows.append(["embed_texts alone", latencies(lambda i: host.embed_texts(TEXTS[i % len(TEXTS)]), timed)])
        rows.append(["search(host, index, text)", latencies(lambda i: search(host, index, TEXTS[i % len(TEXTS)],
                                                                               k=args.k), timed)])
    else:
        print("note: --dim/--query-tokens differ from the model's, so no end-to-end text query")
    c.table(["arm", "p50 ms", "p95 ms", "max ms"],
            [[name, statistics.median(ms), p95(ms), max(ms)] for name, ms in rows])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.index"
        index.save(path)
        size = path.stat().st_size
    print(f"index file: {size / 1e6:.1f} MB for {images} images = {size / images * 1000 / 1e6:.2f} MB per 1k images "
          f"(Q + 1 = {q + 1} float32 vectors of D={dim} per image, ids, paths)")
    search_p95 = p95(rows[0][1])
    c.verdict(GOAL_MS / search_p95, 1, f", i.e. text search p95 {search_p95:.2f} ms <= {GOAL_MS:g} ms")
    host.close()


if __name__ == "__main__":
    main()
