"""The Python API: ``annotate`` on a user's own ``ray.data.Dataset`` (other columns pass through), the
embedding columns' layout, and the listing of sources (no cluster needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from blip2plugins_ray.sources import Item, expand, plan
from ray_helpers import ROOT, blip2_ray

from blip2plugins.errors import OptionError


@pytest.fixture(scope="module")
def connected(ray_cluster: Any) -> Iterator[None]:
    import ray

    ray.init(address=ray_cluster.address)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("connected")
def test_annotate_adds_answers_and_embeddings_and_keeps_the_other_columns(photos: Any) -> None:
    import ray
    from blip2plugins_ray import annotate

    from blip2plugins import Host

    _, paths = photos
    items = [{"image": path, "label": f"item-{index}"} for index, path in enumerate(paths[:5])]
    asked = annotate(ray.data.from_items(items), "ask", question="how many shapes?", model="demo",
                     workers=2, batch_size=2).take_all()
    embedded = annotate(ray.data.from_items(items), "embed", model="demo", workers=1, batch_size=3).take_all()
    with Host.load("demo") as host:
        answers = {path: result.text for path, result in zip(paths[:5], host.ask(paths[:5], "how many shapes?"))}
        vectors = dict(zip(paths[:5], host.embed_images(paths[:5])))
        q, d = host.num_query_tokens, host.embedding_dim
    assert sorted((row["image"], row["label"]) for row in asked) == sorted((i["image"], i["label"]) for i in items)
    assert all(row["answer"] == answers[row["image"]] and row["error"] is None for row in asked)
    for row in embedded:
        expected = vectors[row["image"]]
        assert len(row["queries"]) == q * d and len(row["pooled"]) == d
        assert row["queries"] == pytest.approx(expected.queries.flatten().tolist(), abs=1e-5)
        assert row["pooled"] == pytest.approx(expected.pooled.tolist(), abs=1e-5)
        assert row["model_version"] == host.retrieval_version


def test_plan_lists_folders_shards_and_lines_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "t.parquet").write_bytes(b"")
    listed = plan([str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), "https://example.org/cat.jpg"],
                  [str(tmp_path / "a" / "t.parquet"), "more.jsonl"])
    assert listed == [Item(str(tmp_path / "a" / "t.parquet"), True), Item(str(tmp_path / "a" / "x.png")),
                      Item("https://example.org/cat.jpg"), Item("more.jsonl", True)]
    with pytest.raises(OptionError, match="SOURCE '.*nowhere' does not exist"):
        plan([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match="a folder without images or table shards"):
        plan([str(tmp_path / "empty")])


def test_expand_reads_a_table_s_image_column(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"image": "cats/1.jpg"}\n{"image": "/abs/2.jpg"}\n{"image": null}\n')
    (tmp_path / "no-column.jsonl").write_text('{"path": "x.jpg"}\n')
    rows = list(expand({"ref": str(tmp_path / "t.jsonl"), "table": True}))
    assert [row["image"] for row in rows] == [str(tmp_path / "cats/1.jpg"), "/abs/2.jpg", f"{tmp_path / 't.jsonl'}#2"]
    assert rows[2]["error"] == "the image column holds NoneType, not a reference or image bytes"
    missing = list(expand({"ref": str(tmp_path / "no-column.jsonl"), "table": True}))
    assert len(missing) == 1 and "it has no 'image' column (columns: path)" in missing[0]["error"]


@pytest.mark.parametrize(("args", "message"), [
    (["caption", "nowhere-at-all", "--out", "OUT"], "blip2: SOURCE 'nowhere-at-all' does not exist"),
    (["caption", "--out", "OUT"], "no sources: give SOURCE arguments or --files-from FILE"),
    (["caption", "README.md", "--out", "README.md"], "Directory 'README.md' is a file"),
    (["ask", "what?", str(ROOT / "README.md"), "--out", "OUT", "--temperature", "-1"], "--temperature"),
])
def test_bad_commands_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    done = blip2_ray(*[str(tmp_path / "out") if arg == "OUT" else arg for arg in args])
    assert done.returncode in (1, 2) and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_filesystem_uris_are_listed_and_loaded_through_pyarrow(tmp_path: Path) -> None:
    from PIL import Image

    from blip2plugins.images import load_image
    from blip2plugins.plugins import image_sources

    (tmp_path / "deep").mkdir()
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "deep" / "red.png")
    (tmp_path / "deep" / "rows.jsonl").write_text('{"image": "red.png"}\n')
    uri = f"file://{tmp_path}"
    assert plan([uri]) == [Item(f"{uri}/deep/red.png"), Item(f"{uri}/deep/rows.jsonl", True)]
    assert [row["image"] for row in expand({"ref": f"{uri}/deep/rows.jsonl", "table": True})] == [f"{uri}/deep/red.png"]
    assert load_image(f"{uri}/deep/red.png").getpixel((0, 0)) == (255, 0, 0)  # the integration's image source
    assert any(source.name == "pyarrow-filesystems" for source in image_sources())
    with pytest.raises(OptionError, match=f"SOURCE '{uri}/nothing' does not exist"):
        plan([f"{uri}/nothing"])


def test_embedding_columns_are_float32_lists_with_nulls_for_failed_rows() -> None:
    import torch

    from blip2plugins_ray.predictor import _vectors

    rows = [torch.arange(6, dtype=torch.float64).reshape(2, 3), None, torch.ones(2, 3)]
    column = _vectors(rows, 6)
    assert str(column.type) == "fixed_size_list<item: float>[6]" and column.null_count == 1
    assert column.to_pylist() == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], None, [1.0] * 6]
