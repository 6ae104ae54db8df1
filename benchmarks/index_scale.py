"""The image index at real sizes: recall@10 of the approximate kinds against the exact one, query
p50/p95, build time and bytes per 1,000 images.

Vectors are synthetic, with the real checkpoints' shape (Q=32 per-query vectors of D=256 per image)
and some structure, like embeddings: images around 1,000 topics, each image's query vectors around
the image, text queries near random images (unit vectors throughout). Recall is the share of the
exact index's top 10 images (ITC: best query vector per image) that each kind also returns, over
the timed text queries. Bytes are the index file's (what a search holds in memory: the text-search
index plus the exact pooled one). Queries run one at a time on one thread, as ``blip2 index search``
does. Goal (issue "beyond one machine"): recall@10 >= 0.95.

    python benchmarks/index_scale.py [--quick] [--images 100000] [--kinds flat,ivf-pq,hnsw]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blip2plugins.index import ImageIndex  # noqa: E402
from blip2plugins.index_kinds import factory_for  # noqa: E402
from blip2plugins.types import ImageEmbedding  # noqa: E402

GOAL_RECALL = 0.95


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def collection(images: int, q: int, d: int, texts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, q, d) float32 per-query vectors and (texts, d) text queries."""
    rng = np.random.default_rng(seed)

    def noise(*shape: int) -> np.ndarray:  # about unit length
        return (rng.standard_normal((*shape, d), dtype=np.float32) / np.float32(np.sqrt(d)))

    topics = unit(noise(1000))
    centres = unit(topics[rng.integers(0, 1000, images)] + 0.5 * noise(images))
    vectors = np.empty((images, q, d), dtype=np.float32)
    for start in range(0, images, 10000):  # in parts: the noise of all at once would double the memory
        part = slice(start, min(images, start + 10000))
        vectors[part] = unit(centres[part, None, :] + 0.4 * noise(part.stop - part.start, q))
    queries = unit(centres[rng.integers(0, images, texts)] + 0.3 * noise(texts))
    return vectors, queries


def build(kind: str, vectors: np.ndarray) -> tuple[ImageIndex, float]:
    images, q, d = vectors.shape
    started = time.perf_counter()
    index = ImageIndex.create("synthetic", "v1", d, q, factory=factory_for(kind, d, images * q))
    if index.training_size:
        rng = np.random.default_rng(1)
        rows = rng.choice(images * q, size=min(images * q, index.training_size), replace=False)
        index.train(vectors.reshape(-1, d)[np.sort(rows)])
    for start in range(0, images, 8192):
        part = vectors[start:start + 8192]
        index.add([ImageEmbedding(v, unit(v.mean(0)), "synthetic", "v1", source=f"image-{start + i}")
                   for i, v in enumerate(part)])
    return index, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=32, help="query vectors per image (Q)")
    p.add_argument("--dim", type=int, default=256, help="vector size (D)")
    p.add_argument("--texts", type=int, default=300, help="timed text queries")
    p.add_argument("--kinds", default="flat,ivf-pq,hnsw")
    p.add_argument("--quick", action="store_true", help="5,000 images, 100 queries")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.images, args.texts = 5000, 100
    started = time.perf_counter()
    vectors, texts = collection(args.images, args.queries, args.dim, args.texts, args.seed)
    print(f"{args.images:,} images x {args.queries} x {args.dim} ({vectors.nbytes / 1e9:.2f} GB of float32), "
          f"{args.texts} text queries, made in {time.perf_counter() - started:.0f} s", flush=True)
    exact: list[set[str]] = []
    rows = []
    for kind in ["flat", *[k for k in args.kinds.split(",") if k != "flat"]]:
        index, seconds = build(kind, vectors)
        latencies, found = [], []
        for text in texts:
            tick = time.perf_counter()
            hits = index.search_vector(text, 10)
            latencies.append((time.perf_counter() - tick) * 1000)
            found.append({hit.source for hit in hits})
        if kind == "flat":
            exact = found
        recall = statistics.fmean(len(f & e) / len(e) for f, e in zip(found, exact))
        with tempfile.TemporaryDirectory() as folder:
            index.save(Path(folder) / "index")
            size = (Path(folder) / "index").stat().st_size
        p95 = statistics.quantiles(latencies, n=20)[-1]
        rows.append((kind, index.factory, recall, statistics.median(latencies), p95, size / args.images * 1000 / 1e6,
                     seconds))
        print(f"{kind:8s} {index.factory:16s} recall@10 {recall:.3f}  p50 {statistics.median(latencies):7.2f} ms  "
              f"p95 {p95:7.2f} ms  {size / args.images * 1000 / 1e6:6.2f} MB per 1k images  built in {seconds:.0f} s",
              flush=True)
        del index
    print("\n| kind | FAISS factory | recall@10 | query p50 | query p95 | MB per 1k images | build |")
    print("|---|---|---|---|---|---|---|")
    for kind, factory, recall, p50, p95, mb, seconds in rows:
        print(f"| {kind} | `{factory}` | {recall:.3f} | {p50:.1f} ms | {p95:.1f} ms | {mb:.2f} | {seconds:.0f} s |")
    approximate = [row for row in rows if row[0] != "flat"]
    if approximate:
        worst = min(approximate, key=lambda row: row[2])
        print(f"\nworst recall@10 {worst[2]:.3f} ({worst[0]}): ratio to the {GOAL_RECALL} goal "
              f"{worst[2] / GOAL_RECALL:.2f}x")


if __name__ == "__main__":
    main()
