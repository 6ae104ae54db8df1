"""The image index: exact ITC search with FAISS, persistence and its failures, and the index commands."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import click
import faiss
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image, ImageDraw
from torch.nn import functional as F

from blip2plugins import files, index_commands
from blip2plugins.errors import ImageError, IndexFileError, OptionError
from blip2plugins.index import ImageIndex, add_images, build_index, image_files, locked, search
from blip2plugins.retrieval import itc
from blip2plugins.types import ImageEmbedding

Q, D = 4, 16
MODEL, VERSION = "tiny", "tiny@0123"


def unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def embedding(source: str, queries: torch.Tensor, model: str = MODEL, version: str = VERSION) -> ImageEmbedding:
    return ImageEmbedding(queries, F.normalize(queries.mean(dim=0), dim=-1), model, version, source=source)


def random_embeddings(count: int, seed: int = 0, prefix: str = "img") -> list[ImageEmbedding]:
    generator = torch.Generator().manual_seed(seed)
    return [embedding(f"{prefix}{i:03d}", unit(Q, D, generator=generator)) for i in range(count)]


def filled(embeddings: list[ImageEmbedding]) -> ImageIndex:
    index = ImageIndex.create(MODEL, VERSION, D, Q)
    index.add(embeddings)
    return index


def brute_force(embeddings: list[ImageEmbedding], text: torch.Tensor) -> dict[str, float]:
    """ITC of every image with ``text``: the maximum over query vectors of the cosine, with torch."""
    scores = itc(torch.stack([e.queries for e in embeddings]), text[None, :])[:, 0]
    return {e.source: float(s) for e, s in zip(embeddings, scores)}


def assert_exact_top_k(hits, expected: dict[str, float], k: int) -> None:
    """The hits are k distinct images, each with its own brute-force score, and the scores are the
    brute-force top k (so any tie at the cut-off may go either way, but no better image is missed)."""
    assert len(hits) == min(k, len(expected))
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert len({h.source for h in hits}) == len(hits)
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.source], abs=1e-5)
    best = sorted(expected.values(), reverse=True)[:k]
    assert [h.score for h in hits] == pytest.approx(best, abs=1e-5)


# -- the index alone ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7, 40, 41, 100])
def test_text_search_equals_brute_force_itc(k: int) -> None:
    embeddings = random_embeddings(41)
    index = filled(embeddings)
    texts = unit(6, D, generator=torch.Generator().manual_seed(1))
    for text in texts:
        assert_exact_top_k(index.search_vector(text, k), brute_force(embeddings, text), k)


def test_text_search_is_exact_with_ties_and_images_that_fill_their_q_slots() -> None:
    generator = torch.Generator().manual_seed(2)
    text = unit(D, generator=generator)
    # Images whose Q vectors all score the same (each fills Q of the k*Q slots), duplicates (exact
    # ties between images) and random images.
    near = [F.normalize(text + 0.3 * i * unit(D, generator=generator), dim=-1) for i in range(1, 4)]
    crowd = [embedding(f"crowd{i}", near[i % 3].expand(Q, D).clone()) for i in range(6)]
    embeddings = crowd + random_embeddings(10, seed=3)
    index = filled(embeddings)
    expected = brute_force(embeddings, text)
    for k in range(1, len(embeddings) + 2):
        assert_exact_top_k(index.search_vector(text, k), expected, k)


def test_search_leaves_the_callers_faiss_threads() -> None:
    index = filled(random_embeddings(5))
    before = faiss.omp_get_max_threads()
    index.search_vector(torch.ones(D), 2)
    index.search_pooled(torch.ones(D), 2)
    assert faiss.omp_get_max_threads() == before


def test_image_search_ranks_by_pooled_cosine() -> None:
    embeddings = random_embeddings(30, seed=4)
    index = filled(embeddings)
    pooled = torch.stack([e.pooled for e in embeddings])
    query = embeddings[7].pooled
    hits = index.search_pooled(query, 5)
    expected = {e.source: float(s) for e, s in zip(embeddings, pooled @ query)}
    assert_exact_top_k(hits, expected, 5)
    assert hits[0].source == "img007" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_add_replace_remove_and_re_add() -> None:
    first = random_embeddings(5, seed=5)
    index = filled(first)
    assert len(index) == 5 and index.sources == [e.source for e in first]
    replacement = random_embeddings(1, seed=6, prefix="x")[0]
    replacement.source = "img002"
    index.add([replacement])
    assert len(index) == 5 and index.sources[-1] == "img002"  # replaced, not duplicated
    text = replacement.queries[0]  # its own query vector: the new img002 scores 1
    hits = index.search_vector(text, 5)
    current = [e for e in first if e.source != "img002"] + [replacement]
    assert_exact_top_k(hits, brute_force(current, text), 5)
    assert hits[0].source == "img002" and hits[0].score == pytest.approx(1.0, abs=1e-5)

    assert index.remove(["img002", "img000"]) == 2
    assert index.sources == ["img001", "img003", "img004"]
    assert {h.source for h in index.search_vector(text, 10)} == {"img001", "img003", "img004"}
    with pytest.raises(IndexFileError, match="does not hold 'nope'"):
        index.remove(["img001", "nope"])
    assert len(index) == 3  # nothing removed
    index.add([first[0]])
    assert_exact_top_k(index.search_vector(text, 10), brute_force([first[i] for i in (1, 3, 4, 0)], text), 10)


def test_add_is_all_or_nothing_and_checks_its_input() -> None:
    index = filled(random_embeddings(3))
    good = random_embeddings(1, prefix="new")[0]
    failed = ImageEmbedding(None, None, MODEL, VERSION, source="bad.png", error="bad.png: not an image")
    with pytest.raises(IndexFileError, match="bad.png: its embedding failed"):
        index.add([good, failed])
    other = embedding("other.png", good.queries, model="big", version="big@ffff")
    with pytest.raises(IndexFileError) as info:
        index.add([good, other])
    assert all(name in str(info.value) for name in ("'tiny'", VERSION, "'big'", "big@ffff"))
    with pytest.raises(IndexFileError, match=r"shapes \(4, 8\)"):
        index.add([embedding("short.png", good.queries[:, :8])])
    with pytest.raises(IndexFileError, match="without a source"):
        index.add([embedding("", good.queries)])
    assert index.sources == ["img000", "img001", "img002"]


def test_search_errors() -> None:
    empty = ImageIndex.create(MODEL, VERSION, D, Q)
    with pytest.raises(IndexFileError, match="empty"):
        empty.search_vector(torch.ones(D), 3)
    index = filled(random_embeddings(3))
    with pytest.raises(IndexFileError, match=r"shape \(8,\).*dimension 16"):
        index.search_vector(torch.ones(8), 3)
    with pytest.raises(IndexFileError, match="dimension 16"):
        index.search_pooled(torch.ones(2, D), 3)
    with pytest.raises(OptionError, match="k must be a positive integer"):
        index.search_vector(torch.ones(D), 0)
    with pytest.raises(IndexFileError, match="not finite"):
        index.search_vector(torch.full((D,), float("nan")), 1)


def test_save_and_load_give_the_same_index(tmp_path: Path) -> None:
    embeddings = random_embeddings(20, seed=7)
    embeddings[5].source = "photos/été/\udcff.png"  # non-ASCII, and a byte that is not UTF-8 (as os.fsdecode gives it)
    index = filled(embeddings)
    index.remove(["img003"])
    path = tmp_path / "images.index"
    index.save(path)
    loaded = ImageIndex.load(path)
    assert loaded.metadata() == index.metadata() and loaded.sources == index.sources and loaded.path == path
    text = unit(D, generator=torch.Generator().manual_seed(8))
    assert loaded.search_vector(text, 6) == index.search_vector(text, 6)
    assert loaded.search_pooled(text, 6) == index.search_pooled(text, 6)
    more = random_embeddings(3, seed=9, prefix="more")  # ids keep counting after a load: no collisions
    loaded.add(more)
    kept = [e for e in embeddings if e.source != "img003"] + more
    assert_exact_top_k(loaded.search_vector(text, 30), brute_force(kept, text), 30)


def test_a_failed_save_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "images.index"
    index = filled(random_embeddings(4))
    index.save(path)
    before = path.read_bytes()
    index.add(random_embeddings(2, prefix="new"))

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(IndexFileError, match="cannot write index .*No space left"):
        index.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.index"]  # no temporary file left
    assert len(ImageIndex.load(path)) == 4
    with pytest.raises(IndexFileError, match="cannot write index"):
        index.save(tmp_path / "no-such-folder" / "x.index")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "good.index"
    filled(random_embeddings(6)).save(path)
    return path, path.read_bytes()


def _header_end(data: bytes) -> int:
    return 52 + struct.unpack_from("<Q", data, 12)[0]


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"", "empty file"),
    (lambda d: b"PK\x03\x04 a zip archive, say" + d, "not an index file"),
    (lambda d: d[:5], "truncated"),
    (lambda d: d[:30], "truncated"),
    (lambda d: d[:_header_end(d) - 3], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: d + b"\0", "unexpected bytes"),
    (lambda d: d[:-10] + bytes([d[-10] ^ 1]) + d[-9:], "payload's checksum"),
    (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "header's checksum"),
    (lambda d: d[:8] + struct.pack("<I", 2) + d[12:], "unsupported format version 2.*upgrade"),
    (lambda d: d[:8] + struct.pack("<I", 0) + d[12:], "unsupported format version 0"),
])
def test_damaged_files_are_refused_clearly(saved: tuple[Path, bytes], damage, message: str) -> None:
    path, data = saved
    path.write_bytes(damage(data))
    with pytest.raises(IndexFileError, match=message) as info:
        ImageIndex.load(path)
    assert str(info.value).startswith(f"index {path}: ")


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError, match="no such file"):
        ImageIndex.load(tmp_path / "missing.index")
    with pytest.raises(IndexFileError, match="is a directory"):
        ImageIndex.load(tmp_path)


def test_image_files_walks_folders_sorted(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ("b/deep/z.png", "b/a.JPG", "c.webp", "notes.txt", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    refs, empty = image_files([str(tmp_path), "https://example.com/x.png", str(tmp_path / "a.png"),
                               str(tmp_path / "empty")])
    names = [os.path.relpath(r, tmp_path) if r.startswith(str(tmp_path)) else r for r in refs]
    assert names == ["a.png", "b/a.JPG", "b/deep/z.png", "c.webp", "https://example.com/x.png"]
    assert empty == [(str(tmp_path / "empty"), "no image files in this folder")]


# -- with a host (the tiny retrieval checkpoint) --------------------------------------------------

TEXTS = ["a red circle", "a green triangle and a blue square", "a photo of a cat"]


@pytest.fixture(scope="module")
def host(tiny_retrieval: Path):
    from blip2plugins import Host

    with Host.load(str(tiny_retrieval), max_batch_size=3) as h:
        yield h


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven drawn images (two in a sub-folder), a text file named .png and a note that is skipped."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    colours = ["red", "green", "blue", "yellow", "white", "black", "purple"]
    for i, colour in enumerate(colours):
        image = Image.new("RGB", (40 + 4 * i, 36), "gray")
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)((4, 4, 20 + 2 * i, 24), fill=colour)
        image.save(root / ("sub" if i >= 5 else ".") / f"{colour}.png")
    (root / "broken.png").write_text("not an image")
    (root / "readme.txt").write_text("skipped")
    return root


@pytest.fixture(scope="module")
def built(host, folder: Path):
    missing = str(folder / "missing.png")
    return build_index(host, [str(folder), missing], batch_size=2, progress=False)


def test_build_reports_bad_images_and_indexes_the_rest(host, folder: Path, built) -> None:
    index, report = built
    images = sorted(str(p) for p in folder.rglob("*.png") if p.name != "broken.png")
    assert sorted(report.added) == images and sorted(index.sources) == images and report.replaced == []
    reasons = dict(report.failed)
    assert set(reasons) == {str(folder / "broken.png"), str(folder / "missing.png")}
    assert "not an image" in reasons[str(folder / "broken.png")]
    assert "file not found" in reasons[str(folder / "missing.png")]
    assert index.metadata() | {"created": "", "updated": ""} == {
        "model": host.retrieval_name, "model_version": host.retrieval_version, "model_source": host.retrieval_source,
        "dim": host.embedding_dim, "queries": host.num_query_tokens, "factory": "Flat", "count": 7, "created": "", "updated": ""}


def test_text_search_equals_host_similarity(host, built) -> None:
    index, _ = built
    scores = host.similarity(index.sources, TEXTS)
    for column, text in enumerate(TEXTS):
        expected = dict(zip(index.sources, scores[:, column].tolist()))
        assert_exact_top_k(search(host, index, text, k=4), expected, 4)


def test_image_search_and_rerank(host, built, folder: Path) -> None:
    index, _ = built
    query = str(folder / "blue.png")
    hits = search(host, index, query, k=3, image=True)
    assert hits[0].source == query and hits[0].score == pytest.approx(1.0, abs=1e-5)
    reranked = search(host, index, TEXTS[0], k=4, rerank=True)
    itc_hits = search(host, index, TEXTS[0], k=4)
    assert {h.source for h in reranked} == {h.source for h in itc_hits}
    itc_scores = {h.source: h.score for h in itc_hits}
    probabilities = host.match([h.source for h in reranked], TEXTS[0])
    for hit, probability in zip(reranked, probabilities):
        assert hit.itm == pytest.approx(probability, abs=1e-6) and hit.score == itc_scores[hit.source]
    assert [h.itm for h in reranked] == sorted((h.itm for h in reranked), reverse=True)
    assert [h.rank for h in reranked] == [1, 2, 3, 4]
    with pytest.raises(OptionError, match="text queries only"):
        search(host, index, query, image=True, rerank=True)


def test_rerank_names_an_indexed_image_that_is_gone(host, tmp_path: Path) -> None:
    image = tmp_path / "gone.png"
    Image.new("RGB", (30, 30), "red").save(image)
    index, _ = build_index(host, [str(image)], progress=False)
    image.unlink()
    with pytest.raises(ImageError, match="gone.png: file not found .*rerank"):
        search(host, index, "a red square", k=1, rerank=True)


def test_an_index_of_another_model_is_refused(host, tmp_path: Path) -> None:
    other = filled(random_embeddings(2))
    other.save(tmp_path / "other.index")
    with pytest.raises(IndexFileError) as info:
        search(host, ImageIndex.load(tmp_path / "other.index"), "a red circle")
    message = str(info.value)
    for name in ("tiny", VERSION, host.retrieval_name, host.retrieval_version, "other.index"):
        assert name in message
    with pytest.raises(IndexFileError, match=VERSION):
        add_images(host, other, [str(tmp_path)], progress=False)


# -- the commands ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> click.Group:
    group = click.Group("blip2")
    index_commands.register_commands(group)
    return group


def run(cli: click.Group, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"BLIP2_MODEL": None})


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_commands_build_search_add_remove_info(cli, host, folder: Path, tiny_retrieval: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "photos.index"
    model = str(tiny_retrieval)
    result = run(cli, "index", "build", str(folder), "--out", str(out), "--model", model, "--json")
    assert result.exit_code == 1  # one broken image; the rest is indexed and written
    record = json.loads(result.stdout)
    assert record["added"] == 7 and record["count"] == 7 and record["model_version"] == host.retrieval_version
    [failure] = record["failed"]
    assert failure["source"] == str(folder / "broken.png") and failure["reason"].startswith("not an image")
    assert f"blip2: {folder / 'broken.png'}: " in result.stderr and "Traceback" not in result.stderr

    result = run(cli, "index", "search", str(out), TEXTS[1], "-k", "3", "--model", model, "--json")
    assert result.exit_code == 0, result.output
    index = ImageIndex.load(out)
    expected = search(host, index, TEXTS[1], k=3)
    hits = json_lines(result.stdout)
    assert [(h["source"], h["rank"]) for h in hits] == [(h.source, h.rank) for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert all(h["itm"] is None and h["query"] == TEXTS[1] for h in hits)

    query = str(folder / "red.png")  # an existing image file: an image query
    monkeypatch.chdir(tmp_path)  # the index keeps where its model was loaded from: found from any folder
    result = run(cli, "index", "search", str(out), query, "-k", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[1].strip() == query and float(result.stdout.split("\t")[0]) == pytest.approx(1, abs=1e-4)
    result = run(cli, "index", "search", str(out), TEXTS[0], "--rerank", "-k", "2")
    assert result.exit_code == 0, result.output
    assert [len(line.split("\t")) for line in result.stdout.splitlines()] == [3, 3]

    result = run(cli, "index", "remove", str(out), query, "nope.png", "--json")
    assert result.exit_code == 1 and "blip2: nope.png: not in the index" in result.stderr
    assert json.loads(result.stdout)["removed"] == 1 and ImageIndex.load(out).sources.count(query) == 0
    result = run(cli, "index", "add", str(out), query)
    assert result.exit_code == 0, result.output
    assert "1 image indexed (0 replaced" in result.stdout and len(ImageIndex.load(out)) == 7

    result = run(cli, "index", "info", str(out), "--json")
    info = json.loads(result.stdout)
    assert info["count"] == 7 and info["bytes"] == out.stat().st_size and info["format_version"] == 1
    assert info["model_source"] == str(tiny_retrieval.resolve())


def test_commands_report_errors_in_one_line(cli, tiny_retrieval: Path, folder: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"hello, not an index")
    result = run(cli, "index", "search", str(garbage), "a red circle")
    assert result.exit_code == 1
    assert result.stderr == f"blip2: index {garbage}: not an index file (it does not start with the blip2plugins index signature)\n"
    out = tmp_path / "nothing.index"
    result = run(cli, "index", "build", str(folder / "broken.png"), "--out", str(out), "--model", str(tiny_retrieval))
    assert result.exit_code == 1 and not out.exists() and "nothing.index was not written" in result.stderr
    result = run(cli, "index", "info", str(tmp_path / "absent.index"))
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_match_command(cli, host, tiny_retrieval: Path, folder: Path) -> None:
    image = str(folder / "green.png")
    result = run(cli, "match", image, *TEXTS, "--model", str(tiny_retrieval), "--json")
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert [r["text"] for r in records] == TEXTS
    assert [r["itm"] for r in records] == pytest.approx(host.match(image, TEXTS), abs=1e-6)
    assert [r["itc"] for r in records] == pytest.approx(host.similarity(image, TEXTS)[0].tolist(), abs=1e-6)
    result = run(cli, "match", str(folder / "broken.png"), "x", "--model", str(tiny_retrieval))
    assert result.exit_code == 1 and result.stderr.startswith(f"blip2: {folder / 'broken.png'}: ")


def test_names_that_are_not_utf8_or_hold_controls_print_as_one_valid_utf8_line(cli, folder: Path,
                                                                                tiny_retrieval: Path,
                                                                                tmp_path: Path) -> None:
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname.png")  # a byte that is not UTF-8 (as the OS gives it)
    Image.open(folder / "red.png").save(os.fsencode(odd), "PNG")
    (tmp_path / "new\nline.png").write_text("not an image")
    shown, out = f"{tmp_path}/bad\\xffname.png", tmp_path / "odd.index"
    result = run(cli, "index", "build", str(tmp_path), "--out", str(out), "--model", str(tiny_retrieval), "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["failed"][0]["source"] == str(tmp_path / "new\nline.png")  # JSON escapes it
    assert result.stderr.splitlines() == [f"blip2: {tmp_path}/new\\nline.png: not an image (got text)"]
    result = run(cli, "index", "search", str(out), "a red circle", "-k", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[1] == shown + "\n"
    result = run(cli, "index", "search", str(out), "a red circle", "-k", "1", "--json")
    assert json_lines(result.stdout)[0]["source"] == shown
    result = run(cli, "match", odd, "a red circle", "--model", str(tiny_retrieval), "--json")
    assert json_lines(result.stdout)[0]["image"] == shown
    result = run(cli, "index", "remove", str(out), os.fsdecode(b"gone\xff.png"), "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["unknown"] == ["gone\\xff.png"]
    assert result.stderr.splitlines() == ["blip2: gone\\xff.png: not in the index"]


def test_concurrent_adds_to_one_index_all_survive(host, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared.index"
    build_index(host, [str(folder / "red.png")], progress=False)[0].save(out)
    clean = {k: v for k, v in os.environ.items() if k not in ("BLIP2_MODEL", "BLIP2_PLUGINS", "BLIP2_BLOCK_PLUGINS")}
    adds = [subprocess.Popen([sys.executable, "-m", "blip2plugins.cli", "index", "add", str(out), str(folder / image)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**clean, "CUDA_VISIBLE_DEVICES": ""}) for image in ("green.png", "blue.png")]
    for add in adds:  # each loads the index, then its model (seconds), embeds, and saves
        _, errors = add.communicate(timeout=300)
        assert add.returncode == 0, errors
    assert sorted(ImageIndex.load(out).sources) == sorted(str(folder / name) for name in ("blue.png", "green.png",
                                                                                        "red.png"))


def test_a_killed_writers_temporary_file_is_removed_by_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "images.index"
    child = subprocess.run([sys.executable, "-c", (
        "import os, sys\nfrom pathlib import Path\nfrom blip2plugins import files\n"
        "real = files.os.replace\nfiles.os.replace = lambda src, dst: os._exit(9)  # killed once its file is written\n"
        "from test_index import filled, random_embeddings\n"
        f"filled(random_embeddings(3)).save(Path({str(path)!r}))\n")], cwd=Path(__file__).parent, timeout=120)
    assert child.returncode == 9 and not path.exists()
    [stale] = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    other = tmp_path / ".other.index.0123456789abcdef0123456789abcdef.tmp"  # another file's: not ours to remove
    other.write_bytes(b"x")
    with open(tmp_path / ".images.index.fedcba9876543210fedcba9876543210.tmp", "xb") as live:
        fcntl.flock(live, fcntl.LOCK_EX)  # a writer still at work holds its temporary file locked
        filled(random_embeddings(4)).save(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name, Path(live.name).name])
    assert not stale.exists() and len(ImageIndex.load(path)) == 4


def test_an_index_named_as_long_as_a_file_name_may_be(cli, tmp_path: Path) -> None:
    path = tmp_path / ("i" * 246 + ".idx")  # 250 characters: ".NAME.lock" and ".NAME.TAG.tmp" would not fit
    with locked(path):
        filled(random_embeddings(3)).save(path)
    assert len(ImageIndex.load(path)) == 3
    assert all(len(p.name) <= 255 for p in tmp_path.iterdir())
    result = run(cli, "index", "remove", str(path), "img000")
    assert result.exit_code == 0, result.output
    assert len(ImageIndex.load(path)) == 2


def _edit_header(data: bytes, edit) -> bytes:
    end = _header_end(data)
    header = edit(data[52:end])
    return data[:12] + struct.pack("<Q", len(header)) + hashlib.sha256(header).digest() + header + data[end:]


@pytest.mark.parametrize("edit, message", [
    (lambda h: b"[" * 100_000, "corrupt header: nested more than 64 levels deep"),
    (lambda h: h.replace(b'"dim": 16', b'"dim": ' + b"9" * 5000), "corrupt header: a number of 5,000 digits"),
    (lambda h: h.replace(b'"dim": 16', b'"dim": 0'), "corrupt header: 'dim' is not a whole number from 1"),
    (lambda h: h.replace(b'"queries": 4', b'"queries": 1000000000'), "'queries' is not a whole number"),
    (lambda h: h.replace(b'"next_id": 6', b'"next_id": ' + str(2**80).encode()), "'next_id' is not a whole number"),
    (lambda h: h.replace(b'"img000"', b"7"), "'sources' is not a list of non-empty strings"),
    (lambda h: h.replace(b'"ids": [0,', b'"ids": ["0",'), "'ids' is not a list of whole numbers below 'next_id'"),
    (lambda h: json.dumps({**json.loads(h), "payload": {**json.loads(h)["payload"], "pooled": 2**62}}).encode(),
     "truncated"),
    (lambda h: json.dumps({**json.loads(h), "payload": {**json.loads(h)["payload"], "pooled": -5}}).encode(),
     "'payload' does not give the sizes"),
    (lambda h: h.replace(b'"img000"', b'"\\ud800"'), "a string with a lone surrogate escape"),
    (lambda h: b"[1, 2]", "corrupt header: not a JSON object"),
])
def test_a_hostile_header_is_one_line(saved: tuple[Path, bytes], edit, message: str) -> None:
    path, data = saved
    path.write_bytes(_edit_header(data, edit))
    with pytest.raises(IndexFileError, match=re.escape(message)) as info:
        ImageIndex.load(path)
    assert str(info.value).startswith(f"index {path}: ") and "\n" not in str(info.value)


def test_non_utf8_and_astral_names_survive_the_header_check(tmp_path: Path) -> None:
    sources = ["photos/\udcff\udc80.png", "emoji/\U0001f4a9.png", "plain.png"]
    index = ImageIndex.create(MODEL, VERSION, D, Q)
    index.add([embedding(s, e.queries) for s, e in zip(sources, random_embeddings(3))])
    index.save(tmp_path / "x.index")
    assert ImageIndex.load(tmp_path / "x.index").sources == sources


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "symlink-loop"])
def test_an_index_path_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.index"
    {"fifo": lambda: os.mkfifo(path), "dev-zero": lambda: os.symlink("/dev/zero", path),
     "symlink-loop": lambda: os.symlink(path, path)}[kind]()
    with pytest.raises(IndexFileError, match="not a regular file|Too many levels of symbolic links") as info:
        ImageIndex.load(path)
    assert str(info.value).startswith(f"index {path}: ")


def test_queries_and_sources_of_the_wrong_kind(saved: tuple[Path, bytes]) -> None:
    index = ImageIndex.load(saved[0])
    for vector in ("abc", None, [[1.0]] * 3, {"a": 1}):
        with pytest.raises(IndexFileError, match="the text embedding"):
            index.search_vector(vector)
    with pytest.raises(OptionError, match="k must be a positive integer, got a huge negative integer"):
        index.search_vector(torch.ones(D), -(10**5000))
    with pytest.raises(IndexFileError, match="sources to remove are strings, got list"):
        index.remove([["img000"]])
    with pytest.raises(IndexFileError, match=r"does not hold 'x', 'y', 'z' and 2 more"):
        index.remove(["x", "y", "z", "v", "w"])
    assert index.remove("img000") == 1 and len(index) == 5


@pytest.mark.parametrize("args", [["-k", "9" * 5000], ["-k", str(2**70)]])
def test_a_huge_count_is_a_short_usage_error(cli, saved: tuple[Path, bytes], args: list[str]) -> None:
    result = run(cli, "index", "search", str(saved[0]), "a red circle", *args)
    assert result.exit_code == 2 and "is not a count" in result.stderr and len(result.stderr) < 300
