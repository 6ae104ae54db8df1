"""Approximate text-search indexes (IVF-PQ, HNSW, FAISS factory strings) and indexes built from
embedding shards: recall against the exact index, persistence, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from blip2plugins.cli import build_cli
from blip2plugins.embedding_shards import build_from_shards
from blip2plugins.errors import IndexFileError, OptionError
from blip2plugins.index import ImageIndex
from blip2plugins.index_kinds import factory_for
from blip2plugins.types import ImageEmbedding

Q, D = 4, 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _collection(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images' per-query vectors (n, Q, D) and pooled vectors around 50 topics, and 40 text
    queries near random images."""
    rng = np.random.default_rng(seed)

    def noise(*shape: int) -> np.ndarray:  # about unit length
        return rng.normal(size=(*shape, D)) / np.sqrt(D)

    topics = _unit(noise(50))
    centres = _unit(topics[rng.integers(0, 50, n)] + 0.5 * noise(n))
    vectors = _unit(centres[:, None, :] + 0.4 * noise(n, Q))
    texts = _unit(centres[rng.integers(0, n, 40)] + 0.3 * noise(40))
    return vectors, _unit(vectors.mean(1)), texts


def _embeddings(vectors: np.ndarray, pooled: np.ndarray, version: str = "v1") -> list[ImageEmbedding]:
    return [ImageEmbedding(q, p, "m", version, source=f"img-{i}") for i, (q, p) in enumerate(zip(vectors, pooled))]


def _index(factory: str, vectors: np.ndarray, pooled: np.ndarray) -> ImageIndex:
    index = ImageIndex.create("m", "v1", D, Q, factory=factory)
    if index.training_size:
        index.train(vectors.reshape(-1, D))
    index.add(_embeddings(vectors, pooled))
    return index


def _recall(index: ImageIndex, exact: ImageIndex, texts: np.ndarray, k: int = 10) -> float:
    found = [len({h.source for h in index.search_vector(t, k)} & {h.source for h in exact.search_vector(t, k)})
             for t in texts]
    return sum(found) / (k * len(texts))


@pytest.mark.parametrize(("kind", "recall"), [("ivf-pq", 0.95), ("hnsw", 0.95), ("IVF64,Flat", 0.95)])
def test_approximate_kinds_find_what_the_exact_index_finds_and_survive_a_round_trip(kind: str, recall: float,
                                                                                    tmp_path: Path) -> None:
    vectors, pooled, texts = _collection(3000)
    exact = _index("Flat", vectors, pooled)
    factory = factory_for(kind, D, len(vectors) * Q)
    approximate = _index(factory, vectors, pooled)
    assert _recall(approximate, exact, texts) >= recall  # on these clustered vectors; real sizes: the benchmark
    approximate.save(tmp_path / "a.idx")
    loaded = ImageIndex.load(tmp_path / "a.idx")
    assert loaded.factory == factory and loaded.metadata()["factory"] == factory
    assert [loaded.search_vector(t, 10) for t in texts[:5]] == [approximate.search_vector(t, 10) for t in texts[:5]]
    assert loaded.search_pooled(pooled[7], 1)[0].source == "img-7"  # the image-search side stays exact


def test_the_ivf_pq_kind_is_sized_by_the_collection() -> None:
    assert factory_for("ivf-pq", 256, 3_200_000) == "IVF2048,PQ128x4fs,Refine(SQ8)"
    assert factory_for("ivf-pq", 256, 640) == "IVF16,PQ128x4fs,Refine(SQ8)"
    assert factory_for("hnsw", 256, 10) == "HNSW32,SQ8"
    assert factory_for("IVF256,PQ16x4fs", 256, 10) == "IVF256,PQ16x4fs"


def test_refusals_are_clear() -> None:
    vectors, pooled, _ = _collection(300)
    with pytest.raises(OptionError, match="FAISS cannot build an index 'NotAnIndex' of dimension 32"):
        ImageIndex.create("m", "v1", D, Q, factory="NotAnIndex")
    untrained = ImageIndex.create("m", "v1", D, Q, factory=factory_for("ivf-pq", D, 1200))
    with pytest.raises(IndexFileError, match=r"must be trained on a sample of vectors before images are added"):
        untrained.add(_embeddings(vectors, pooled))
    with pytest.raises(IndexFileError, match="cannot be trained on 10 vectors .* use the flat kind"):
        untrained.train(vectors.reshape(-1, D)[:10])
    hnsw = _index("HNSW32,SQ8", vectors, pooled)
    with pytest.raises(IndexFileError, match=r"\(HNSW32,SQ8\) cannot remove or replace images: rebuild it"):
        hnsw.remove(["img-3"])
    assert "img-3" in hnsw and len(hnsw) == 300  # nothing was removed


def _shard(path: Path, vectors: np.ndarray, pooled: np.ndarray, names: list[str], *, version: str = "v1",
           errors: list[str | None] | None = None) -> None:
    n = len(names)
    table = pa.table({
        "image": names,
        "queries": pa.array([v.reshape(-1).tolist() for v in vectors], pa.list_(pa.float32(), Q * D)),
        "pooled": pa.array([p.tolist() for p in pooled], pa.list_(pa.float32(), D)),
        "model": ["m"] * n, "model_source": ["/models/m"] * n, "model_version": [version] * n,
        "error": errors or [None] * n,
    })
    pq.write_table(table, path)


def test_an_index_built_from_shards_equals_one_built_from_the_embeddings(tmp_path: Path) -> None:
    vectors, pooled, texts = _collection(500)
    names = [f"img-{i}" for i in range(500)]
    (tmp_path / "emb").mkdir()
    _shard(tmp_path / "emb" / "a.parquet", vectors[:300], pooled[:300], names[:300])
    errors: list[str | None] = [None] * 200
    errors[5] = "img-305: not an image"
    _shard(tmp_path / "emb" / "b.parquet", vectors[300:], pooled[300:], names[300:], errors=errors)
    _shard(tmp_path / "again.parquet", vectors[:2], pooled[:2], names[:2])  # already in a.parquet: indexed once
    index, report = build_from_shards([str(tmp_path / "emb"), str(tmp_path / "again.parquet")])
    assert report.failed == [("img-305", "img-305: not an image")] and len(report.added) == 499 == len(index)
    assert (index.model, index.model_source, index.dim, index.queries) == ("m", "/models/m", D, Q)
    keep = [i for i in range(500) if i != 305]
    direct = ImageIndex.create("m", "v1", D, Q)
    direct.add(_embeddings(vectors, pooled)[:305] + _embeddings(vectors, pooled)[306:])
    for text in texts[:10]:
        assert index.search_vector(text, 5) == direct.search_vector(text, 5)
    approximate, _ = build_from_shards([str(tmp_path / "emb")], kind="ivf-pq")
    assert approximate.factory == factory_for("ivf-pq", D, len(keep) * Q) and len(approximate) == 499

    result = CliRunner().invoke(build_cli(), ["index", "build", str(tmp_path / "emb"), "--from-embeddings",
                                              "--kind", "hnsw", "--out", str(tmp_path / "x.idx"), "--json"])
    assert result.exit_code == 1  # one row had an error, reported on stderr
    assert "blip2: img-305: img-305: not an image" in result.stderr
    assert ImageIndex.load(tmp_path / "x.idx").factory == "HNSW32,SQ8"


def test_shards_of_two_model_versions_are_refused(tmp_path: Path) -> None:
    vectors, pooled, _ = _collection(20)
    _shard(tmp_path / "a.parquet", vectors[:10], pooled[:10], [f"a{i}" for i in range(10)])
    _shard(tmp_path / "b.parquet", vectors[10:], pooled[10:], [f"b{i}" for i in range(10)], version="v2")
    result = CliRunner().invoke(build_cli(), ["index", "build", str(tmp_path), "--from-embeddings",
                                              "--out", str(tmp_path / "x.idx")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "'b0' was embedded by m (v2), the others by m (v1)" in result.stderr
    assert not (tmp_path / "x.idx").exists()
