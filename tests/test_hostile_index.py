"""The image index under hostile files (truncated, wrong magic, huge header sizes, edited headers,
special files) and hostile arguments, through ``ImageIndex`` and `blip2 index`: IndexFileError with one
line, never a traceback, never a crash of the process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from blip2plugins.index import MAGIC, ImageIndex

from hostile import checks, corpus, fixtures

pytestmark = pytest.mark.timeout(60)
PREFIX = struct.Struct("<8sIQ32s")


@pytest.fixture(autouse=True)
def shared_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures.share_hosts(monkeypatch)


@pytest.fixture(scope="module")
def original() -> tuple[bytes, list[str]]:
    path, images = fixtures.built_index()
    return path.read_bytes(), images


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    _, _, size, _ = PREFIX.unpack_from(data)
    return json.loads(data[PREFIX.size:PREFIX.size + size]), data[PREFIX.size + size:]


def assemble(header: bytes | dict[str, Any], payload: bytes, *, version: int = 1, size: int | None = None,
             digest: bytes | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return PREFIX.pack(MAGIC, version, len(raw) if size is None else size,
                       hashlib.sha256(raw).digest() if digest is None else digest) + raw + payload


def _header_edit(**changes: Any) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        header, payload = split(data)
        header.update(changes)
        return assemble(header, payload)
    return edit


def _raw_header(text: Callable[[dict[str, Any]], str]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        header, payload = split(data)
        return assemble(text(header).encode("utf-8", "surrogatepass"), payload)
    return edit


def _damages() -> dict[str, Callable[[bytes], bytes]]:
    d: dict[str, Callable[[bytes], bytes]] = {}
    for cut in (0, 1, 4, 8, 12, 20, 51, 52, 60):
        d[f"truncated-at-{cut}"] = lambda data, cut=cut: data[:cut]
    d["truncated-mid-header"] = lambda data: data[: PREFIX.size + PREFIX.unpack_from(data)[2] // 2]
    d["truncated-at-header-end"] = lambda data: data[: PREFIX.size + PREFIX.unpack_from(data)[2]]
    d["truncated-mid-payload"] = lambda data: data[: (len(data) + PREFIX.size + PREFIX.unpack_from(data)[2]) // 2]
    d["truncated-last-byte"] = lambda data: data[:-1]
    d["trailing-bytes"] = lambda data: data + b"\x00" * 7
    d["wrong-magic"] = lambda data: b"NOTANIDX" + data[8:]
    d["zip-magic"] = lambda data: b"PK\x03\x04" + data[4:]
    for version in (0, 2, 2**32 - 1):
        d[f"format-version-{version}"] = lambda data, v=version: data[:8] + struct.pack("<I", v) + data[12:]
    for size in (0, 2**31, 2**63, 2**64 - 1):
        d[f"header-size-{size}"] = lambda data, s=size: data[:12] + struct.pack("<Q", s) + data[20:]
    d["header-checksum-zero"] = lambda data: data[:20] + b"\x00" * 32 + data[52:]
    edits = {
        "dim-0": {"dim": 0}, "dim-negative": {"dim": -1}, "dim-string": {"dim": "16"}, "dim-float": {"dim": 16.5},
        "queries-0": {"queries": 0}, "queries-huge": {"queries": 10**9}, "sources-not-list": {"sources": "abc"},
        "sources-ints": {"sources": [1, 2, 3, 4]}, "sources-duplicate": {"sources": ["a", "a", "b", "c"]},
        "ids-huge": {"ids": [2**70, 2**70 + 1, 2**70 + 2, 2**70 + 3]}, "ids-negative": {"ids": [-1, -2, -3, -4]},
        "ids-strings": {"ids": ["0", "1", "2", "3"]}, "next-id-negative": {"next_id": -1},
        "next-id-huge": {"next_id": 2**80}, "payload-negative": {"payload": {"vectors": -5, "pooled": 5, "sha256": "x"}},
        "payload-strings": {"payload": {"vectors": "1", "pooled": "2", "sha256": "x"}}, "payload-null": {"payload": None},
        "payload-huge": {"payload": {"vectors": 2**62, "pooled": 0, "sha256": "x"}}, "model-int": {"model": 5},
        "model-version-null": {"model_version": None}, "created-list": {"created": []}, "no-sources": {"sources": None},
    }
    for name, change in edits.items():
        d[f"header-{name}"] = _header_edit(**change)
    d["header-nested-100k"] = _raw_header(lambda h: corpus.deep_json(100_000))
    d["header-int-5000-digits"] = _raw_header(lambda h: json.dumps({**h, "dim": "@"}).replace('"@"', "9" * 5000))
    d["header-next-id-4400-digits"] = _raw_header(lambda h: json.dumps({**h, "next_id": "@"}).replace('"@"', "1" * 4400))
    d["header-lone-surrogate-source"] = _raw_header(lambda h: json.dumps(h).replace(json.dumps(h["sources"][0]), '"\\ud800"', 1))
    d["header-top-level-list"] = _raw_header(lambda h: "[1, 2]")
    d["header-nan"] = _raw_header(lambda h: json.dumps({**h, "dim": "@"}).replace('"@"', "NaN"))
    d["header-not-utf8"] = lambda data: assemble(b'{"model": "\xff\xfe"}', split(data)[1])
    d["header-html"] = _raw_header(lambda h: "<html></html>")
    d["empty"] = lambda data: b""
    d["text"] = lambda data: b"hello\n"
    return d


DAMAGES = _damages()


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_index_file(original: tuple[bytes, list[str]], tmp_path: Path, name: str) -> None:
    data, images = original
    path = tmp_path / "x.idx"
    path.write_bytes(DAMAGES[name](data))
    what = f"index {name}"
    checks.api(lambda: ImageIndex.load(path), f"ImageIndex.load({name})")
    for args in (["info", str(path)], ["info", str(path), "--json"], ["search", str(path), "a red circle", "-k", "2"],
                 ["search", str(path), images[0], "--image"], ["add", str(path), images[1]],
                 ["remove", str(path), images[2]]):
        checks.assert_cli_clean(checks.cli(["index", *args]), f"{what}: index {args[0]}")


FAISS_DAMAGES = ["payload-bitflip", "payload-zeros", "payload-swapped", "payload-random"]


@pytest.mark.parametrize("name", FAISS_DAMAGES)
def test_payload_garbage_with_valid_checksums_does_not_crash(original: tuple[bytes, list[str]], tmp_path: Path,
                                                             name: str) -> None:
    """FAISS parses the payload: garbage that passes the checksums must be refused, not crash the process."""
    data, _ = original
    header, payload = split(data)
    sizes = header["payload"]
    body = bytearray(payload)
    if name == "payload-bitflip":
        for i in range(40, len(body), 97):
            body[i] ^= 0x5A
    elif name == "payload-zeros":
        body[8:] = b"\x00" * (len(body) - 8)
    elif name == "payload-swapped":
        v = sizes["vectors"]
        body = bytearray(payload[v:] + payload[:v])
        sizes = {**sizes, "vectors": len(payload) - v, "pooled": v}
    else:
        body = bytearray(corpus.rng(name).randbytes(len(body)))
    header["payload"] = {**sizes, "sha256": hashlib.sha256(bytes(body)).hexdigest()}
    path = tmp_path / "x.idx"
    path.write_bytes(assemble(header, bytes(body)))
    checks.api_isolated("from blip2plugins.index import ImageIndex", f"ImageIndex.load({str(path)!r}).search_pooled([1.0] * {header['dim']}, 2)",
                        f"index with {name}", timeout=30)


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero", "dangling-symlink", "symlink-loop"])
def test_index_path_that_is_not_a_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.idx"
    {"directory": lambda: path.mkdir(), "fifo": lambda: os.mkfifo(path), "dev-zero": lambda: os.symlink("/dev/zero", path),
     "dangling-symlink": lambda: os.symlink(tmp_path / "nowhere", path), "symlink-loop": lambda: os.symlink(path, path)}[kind]()
    checks.api_isolated("from blip2plugins.index import ImageIndex", f"ImageIndex.load({str(path)!r})",
                        f"ImageIndex.load({kind})", timeout=15)
    if kind in ("directory", "dangling-symlink", "symlink-loop"):
        checks.assert_cli_clean(checks.cli(["index", "info", str(path)]), f"index info {kind}")


@pytest.fixture
def index_copy(original: tuple[bytes, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    data, images = original
    path = tmp_path / "copy.idx"
    path.write_bytes(data)
    return path, images


ARGUMENTS = {
    "k-0": ["search", "{idx}", "a red", "-k", "0"], "k-huge": ["search", "{idx}", "a red", "-k", "9" * 5000],
    "k-2**70": ["search", "{idx}", "a red", "-k", str(2**70)], "k-nan": ["search", "{idx}", "a red", "-k", "nan"],
    "query-empty": ["search", "{idx}", ""], "query-nul": ["search", "{idx}", "a\x00b"],
    "query-huge": ["search", "{idx}", "a red circle " * 20000], "query-surrogate": ["search", "{idx}", "\udcff"],
    "query-rerank-huge": ["search", "{idx}", "x" * 100000, "--rerank"],
    "query-image-missing": ["search", "{idx}", "/nonexistent.png", "--image"],
    "query-image-fifo": ["search", "{idx}", "{fifo}", "--image"], "query-image-dir": ["search", "{idx}", "/", "--image"],
    "query-image-bomb": ["search", "{idx}", "{bomb}", "--image"], "rerank-image": ["search", "{idx}", "a", "--rerank", "--image"],
    "add-fifo": ["add", "{idx}", "{fifo}"], "add-dev-zero": ["add", "{idx}", "/dev/zero"], "add-bomb": ["add", "{idx}", "{bomb}"],
    "add-empty-dir": ["add", "{idx}", "{empty_dir}"], "add-bad-port-url": ["add", "{idx}", "http://127.0.0.1:99999/x.png"],
    "add-batch-size-0": ["add", "{idx}", "{good}", "--batch-size", "0"], "add-batch-size-huge": ["add", "{idx}", "{good}", "--batch-size", "9" * 30],
    "add-other-model": ["add", "{idx}", "{good}", "--model", "/nonexistent-model"], "remove-unknown": ["remove", "{idx}", "nope.png"],
    "remove-nul": ["remove", "{idx}", "a\x00b"], "build-out-dir": ["build", "{good}", "--out", "{empty_dir}"],
    "build-out-fifo": ["build", "{good}", "--out", "{fifo}"], "build-out-250-chars": ["build", "{good}", "--out", "{long}"],
    "build-out-in-missing-dir": ["build", "{good}", "--out", "/nonexistent/dir/x.idx"], "build-only-bad": ["build", "{bomb}", "--out", "{new}"],
    "build-fifo-only": ["build", "{fifo}", "--out", "{new}"], "info-missing": ["info", "/nonexistent.idx"],
    "search-missing": ["search", "/nonexistent.idx", "a"], "add-to-missing": ["add", "/nonexistent/x.idx", "{good}"],
}


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_index_command_arguments(index_copy: tuple[Path, list[str]], tmp_path: Path, name: str) -> None:
    path, images = index_copy
    os.mkfifo(tmp_path / "f.png")
    (tmp_path / "bomb.png").write_bytes(corpus.png_header(100000, 100000))
    (tmp_path / "empty").mkdir()
    values = {"idx": str(path), "fifo": str(tmp_path / "f.png"), "bomb": str(tmp_path / "bomb.png"), "good": images[0],
              "empty_dir": str(tmp_path / "empty"), "long": str(tmp_path / ("i" * 246 + ".idx")), "new": str(tmp_path / "new.idx")}
    args = [a.format(**values) if "{" in a else a for a in ARGUMENTS[name]]
    checks.assert_cli_clean(checks.cli(["index", *args]), f"index {name}")
    if path.exists():
        checks.api(lambda: ImageIndex.load(path), f"load after {name}")


@pytest.mark.parametrize("gone", ["deleted", "fifo", "truncated", "directory"])
def test_rerank_when_an_indexed_image_changed(index_copy: tuple[Path, list[str]], tmp_path: Path, gone: str) -> None:
    path, images = index_copy
    moved = tmp_path / "images"
    shutil.copytree(Path(images[0]).parent, moved, ignore=shutil.ignore_patterns("*.idx"))
    index = ImageIndex.load(path)
    index.remove(images)
    index.add([e.__class__(e.queries, e.pooled, e.model, e.model_version, source=str(moved / Path(e.source).name))
               for e in fixtures.retrieval_host().embed_images([str(moved / Path(i).name) for i in images])])
    index.save(path)
    victim = moved / Path(images[0]).name
    victim.unlink()
    {"deleted": lambda: None, "fifo": lambda: os.mkfifo(victim), "truncated": lambda: victim.write_bytes(b"\x89PNG"),
     "directory": lambda: victim.mkdir()}[gone]()
    checks.assert_cli_clean(checks.cli(["index", "search", str(path), "a red circle", "-k", "4", "--rerank"]), f"rerank {gone}")


@pytest.mark.parametrize(("vector", "k"), [
    ([float("nan")] * 4, 2), ("abc", 2), (None, 2), ([[1.0]] * 3, 2), (np.zeros((1, 10**6), dtype=np.float32), 1),
    ("dim", 0), ("dim", -1), ("dim", True), ("dim", 2**70), ("dim", 10**5000), ("dim", 2.5)], ids=lambda x: checks.short(x, 20))
def test_search_vector_arguments(index_copy: tuple[Path, list[str]], vector: object, k: object) -> None:
    index = ImageIndex.load(index_copy[0])
    if isinstance(vector, str) and vector == "dim":
        vector = np.ones(index.dim, dtype=np.float32)
    checks.api(lambda: index.search_vector(vector, k), "search_vector")  # type: ignore[arg-type]
    checks.api(lambda: index.search_pooled(vector, k), "search_pooled")  # type: ignore[arg-type]
    checks.api(lambda: index.remove([vector]) if isinstance(vector, str) else None, "remove")
