"""Training datasets: every format, image resolution, bad records, duplicates, fingerprint, split, examples."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from PIL import Image

from blip2plugins.errors import DataError, OptionError
from blip2plugins.families import OPT, T5
from blip2plugins.training.data import CaptionDataset, Problem, Record, read_dataset

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "gray": (128, 128, 128)}


def png(path: Path, color: str = "red", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[color]).save(path)
    return path


def jsonl(path: Path, *objects: object) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def problems(data: CaptionDataset) -> dict[str, str]:
    return {p.where: p.reason for p in data.skipped}


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_reads_captions_and_questions_resolving_paths_against_the_file(tmp_path: Path, monkeypatch) -> None:
    png(tmp_path / "set" / "imgs" / "a.png")
    b = png(tmp_path / "elsewhere" / "b.png", "blue")
    path = jsonl(
        tmp_path / "set" / "train.jsonl",
        {"image": "imgs/a.png", "caption": "  a red\n square ", "id": 7},
        "",
        {"image": str(b), "question": "what color?", "answer": "blue"},
    )
    monkeypatch.chdir(tmp_path)  # resolution must not depend on the working directory
    data = read_dataset(path)
    assert list(data) == [
        Record(str(tmp_path / "set" / "imgs" / "a.png"), "a red square", None, f"{path}:1"),
        Record(str(b), "blue", "what color?", f"{path}:3"),
    ]
    assert data.skipped == () and data.duplicates == 0
    assert data.summary() == "2 records (1 caption, 1 question) from 1 file; 0 skipped, 0 duplicates"


def test_url_references_are_kept_as_written(tmp_path: Path) -> None:
    refs = ["https://example.com/a.png", "data:image/png;base64,iVBORw0KGgo=", "s3://bucket/key.png",
            "file:///nowhere/x.png"]
    path = jsonl(tmp_path / "d.jsonl", *({"image": ref, "caption": f"c{i}"} for i, ref in enumerate(refs)))
    data = read_dataset(path)
    assert [r.image for r in data] == refs
    assert data.skipped == ()


def test_image_root_overrides_the_file_folder(tmp_path: Path) -> None:
    png(tmp_path / "pictures" / "a.png")
    (tmp_path / "meta").mkdir()
    path = jsonl(tmp_path / "meta" / "d.jsonl", {"image": "a.png", "caption": "x"})
    assert read_dataset(path, image_root=tmp_path / "pictures")[0].image == str(tmp_path / "pictures" / "a.png")
    assert "image file not found" in read_dataset(path).skipped[0].reason


def test_jsonl_bad_records_are_skipped_with_line_and_reason(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"image": "a.png", "caption": "good"}),
        "{not json",
        "[1, 2]",
        json.dumps({"caption": "no image"}),
        json.dumps({"image": "a.png", "caption": "   "}),
        json.dumps({"image": "a.png", "caption": 3}),
        json.dumps({"image": "a.png", "question": "why?"}),
        json.dumps({"image": "a.png", "answer": "because"}),
        json.dumps({"image": "a.png", "caption": "c", "question": "q", "answer": "a"}),
        json.dumps({"image": "missing.png", "caption": "c"}),
        json.dumps({"image": "a.png"}),
    ]
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe bad bytes\n")
    data = read_dataset(path)
    assert [r.where for r in data] == [f"{path}:1"]
    found = problems(data)
    expected = {
        2: "not valid JSON", 3: "not a JSON object (got a list)", 4: "missing image", 5: "empty caption",
        6: "caption must be a string, got a number", 7: "question without an answer",
        8: "answer without a question", 9: "has both a caption and a question/answer",
        10: f"image file not found: {tmp_path / 'missing.png'}", 11: "missing caption", 12: "not UTF-8 text",
    }
    assert sorted(found) == sorted(f"{path}:{n}" for n in expected)
    for n, reason in expected.items():
        assert found[f"{path}:{n}"].startswith(reason), (n, found[f"{path}:{n}"])
    assert data.summary().endswith("11 skipped, 0 duplicates")


def test_strict_raises_on_the_first_bad_record(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = jsonl(tmp_path / "d.jsonl", {"image": "a.png", "caption": "ok"}, {"image": "a.png", "caption": ""},
                 {"image": "a.png"})
    with pytest.raises(DataError, match=r"d\.jsonl:2: empty caption"):
        read_dataset(path, strict=True)


# --- CSV --------------------------------------------------------------------------------------


def test_csv_with_multiline_cells_bad_rows_and_line_numbers(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", "green")
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8-sig") as file:  # with a BOM, as Excel writes
        writer = csv.writer(file)
        writer.writerow([" image", "caption", "question", "answer"])
        writer.writerow(["a.png", "a red\nsquare", "", ""])        # lines 2-3
        writer.writerow(["b.png", "", "what shape?", "circle"])   # line 4
        file.write("\n")                                          # line 5: blank
        writer.writerow(["b.png", "", "", ""])                    # line 6
        writer.writerow(["a.png", "x", "", "", "extra"])          # line 7
        writer.writerow(["nope.png", "x", "", ""])                # line 8
    data = read_dataset(path)
    assert [(r.where, r.question, r.target) for r in data] == [
        (f"{path}:2", None, "a red square"), (f"{path}:4", "what shape?", "circle"),
    ]
    found = problems(data)
    assert sorted(found) == [f"{path}:6", f"{path}:7", f"{path}:8"]
    assert found[f"{path}:6"].startswith("missing caption")
    assert found[f"{path}:7"] == "5 fields, but the header names 4"
    assert found[f"{path}:8"].startswith("image file not found")


def test_csv_without_an_image_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("picture,caption\na.png,x\n")
    with pytest.raises(DataError, match=r"d\.csv: the header has no 'image' column \(columns: picture, caption\)"):
        read_dataset(path)


# --- COCO -------------------------------------------------------------------------------------


def coco(tmp_path: Path) -> Path:
    png(tmp_path / "images" / "1.png")
    png(tmp_path / "images" / "2.png", "blue")
    path = tmp_path / "ann" / "captions.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"},
                   {"id": 3, "file_name": "3a.png"}, {"id": 3, "file_name": "3b.png"}, {"id": 4}],
        "annotations": [
            {"image_id": 1, "caption": "a red square"}, {"image_id": 1, "caption": "red"},
            {"image_id": 2, "caption": "blue"}, {"image_id": 9, "caption": "x"}, {"image_id": 3, "caption": "y"},
            {"image_id": 2}, {"image_id": 4, "caption": "z"},
        ],
    }))
    return path


def test_coco_file_names_resolve_against_image_root(tmp_path: Path) -> None:
    path = coco(tmp_path)
    data = read_dataset(path, image_root=tmp_path / "images")
    root = tmp_path / "images"
    assert [(r.image, r.target, r.where) for r in data] == [
        (str(root / "1.png"), "a red square", f"{path}:annotations[0]"),
        (str(root / "1.png"), "red", f"{path}:annotations[1]"),
        (str(root / "2.png"), "blue", f"{path}:annotations[2]"),
    ]
    assert problems(data) == {
        f"{path}:annotations[3]": "image_id 9 is not in 'images'",
        f"{path}:annotations[4]": "image_id 3 is listed more than once in 'images'",
        f"{path}:annotations[5]": "missing caption (or question and answer)",
        f"{path}:annotations[6]": "missing image",
    }


def test_coco_default_root_is_the_json_folder(tmp_path: Path) -> None:
    data = read_dataset(coco(tmp_path))
    assert len(data) == 0
    assert problems(data)[f"{tmp_path / 'ann' / 'captions.json'}:annotations[0]"] == (
        f"image file not found: {tmp_path / 'ann' / '1.png'}"
    )


# --- Label Studio -----------------------------------------------------------------------------


def test_label_studio_export(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", "blue")

    def textarea(*texts: str, to_name: str = "image") -> dict:
        return {"type": "textarea", "from_name": "caption", "to_name": to_name, "value": {"text": list(texts)}}

    tasks = [
        {"id": 1, "data": {"image": "a.png"}, "annotations": [
            {"was_cancelled": False, "result": [
                {"type": "choices", "value": {"choices": ["x"]}}, textarea("a red square", "red"),
            ]},
        ]},
        {"id": 2, "data": {"photo": "b.png", "n": 3}, "annotations": [
            {"was_cancelled": True, "result": [textarea("cancelled text", to_name="photo")]},
            {"was_cancelled": False, "result": [textarea("blue", to_name="photo")]},
        ]},
        {"id": 3, "data": {"pic": "b.png"}, "annotations": [{"result": [textarea("fallback", to_name="img")]}]},
        {"id": 4, "data": {"image": "a.png"}, "annotations": []},
        {"id": 5, "data": {"image": "a.png"}, "annotations": [{"result": [textarea("  ")]}]},
        {"id": 6, "data": {"image": "a.png"}, "annotations": [{"result": [{"type": "textarea", "value": {}}]}]},
        "junk",
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    data = read_dataset(path)
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    assert [(r.image, r.target, r.where) for r in data] == [
        (a, "a red square", f"{path}:[0].annotations[0].result[1]"),
        (a, "red", f"{path}:[0].annotations[0].result[1]"),
        (b, "blue", f"{path}:[1].annotations[1].result[0]"),
        (b, "fallback", f"{path}:[2].annotations[0].result[0]"),
    ]
    assert all(r.question is None for r in data)
    assert problems(data) == {
        f"{path}:[4].annotations[0].result[0]": "empty caption",
        f"{path}:[5].annotations[0].result[0]": "TextArea result without text",
        f"{path}:[6]": "not a JSON object (got a string)",
    }


def test_label_studio_cancelled_annotation_yields_nothing(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = tmp_path / "export.json"
    result = {"type": "textarea", "from_name": "caption", "to_name": "image", "value": {"text": ["a red square"]}}
    path.write_text(json.dumps([{"id": 1, "data": {"image": "a.png"},
                                 "annotations": [{"was_cancelled": True, "result": [result]}]}]))
    data = read_dataset(path)
    assert len(data) == 0 and data.skipped == ()
    path.write_text(path.read_text().replace("true", "false"))
    data = read_dataset(path)
    assert [r.target for r in data] == ["a red square"]


def test_label_studio_json_min(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = tmp_path / "min.json"
    path.write_text(json.dumps([
        {"image": "a.png", "id": 1, "caption": ["one", "two"], "annotator": 1},
        {"image": "a.png", "id": 2, "caption": "three"},
        {"image": "a.png", "id": 3, "question": "how many?", "answer": "1"},
    ]))
    data = read_dataset(path)
    assert [(r.target, r.question, r.where) for r in data] == [
        ("one", None, f"{path}:[0]"), ("two", None, f"{path}:[0]"), ("three", None, f"{path}:[1]"),
        ("1", "how many?", f"{path}:[2]"),
    ]


# --- formats, several files, duplicates --------------------------------------------------------


def test_format_choice_and_override(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    text = tmp_path / "lines.txt"
    jsonl(text, {"image": "a.png", "caption": "x"})
    with pytest.raises(DataError, match=r"lines\.txt: unknown dataset format"):
        read_dataset(text)
    assert [r.target for r in read_dataset(text, format="jsonl")] == ["x"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match=r"other\.json: unknown JSON dataset"):
        read_dataset(other)
    other.write_text(json.dumps([{"image": "a.png", "caption": "y"}]))
    with pytest.raises(DataError, match=r"other\.json: not a COCO captions file"):
        read_dataset(other, format="coco")
    other.write_text("[1,\n oops]")
    with pytest.raises(DataError, match=r"other\.json:2: not valid JSON"):
        read_dataset(other)
    with pytest.raises(OptionError, match="unknown dataset format 'yaml'"):
        read_dataset(text, format="yaml")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"absent\.jsonl: cannot read"):
        read_dataset(tmp_path / "absent.jsonl")


def test_several_files_and_duplicates(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "sub" / "b.png", "blue")
    first = jsonl(tmp_path / "one.jsonl", {"image": "a.png", "caption": "a red square"},
                  {"image": "a.png", "question": "how many?", "answer": "one"})
    second = tmp_path / "sub" / "two.csv"
    second.write_text(
        "image,caption,question,answer\n"
        f"{tmp_path / 'a.png'},a  red\tsquare,,\n"   # same as one.jsonl:1 after normalisation
        "../a.png,,how many?,one\n"                  # same as one.jsonl:2, by another path
        "../a.png,,how many shapes?,one\n"           # another question: kept
        "b.png,a blue square,,\n"
        "b.png,,,\n"
    )
    data = read_dataset([first, str(second)])
    assert data.duplicates == 2
    assert [r.where for r in data] == [f"{first}:1", f"{first}:2", f"{second}:4", f"{second}:5"]
    assert data.sources == (str(first), str(second))
    assert data.summary() == "4 records (2 captions, 2 questions) from 2 files; 1 skipped, 2 duplicates"
    assert data.skipped == (Problem(f"{second}:6", "missing caption (or question and answer)"),)
    with pytest.raises(DataError, match="no dataset files"):
        read_dataset([])


# --- fingerprint and split ---------------------------------------------------------------------


def make_set(folder: Path, n_images: int = 10, captions: int = 2) -> Path:
    rows = []
    for i in range(n_images):
        png(folder / f"{i}.png", list(COLORS)[i % 4], size=(4 + i, 4))
        rows += [{"image": f"{i}.png", "caption": f"image {i} caption {c}"} for c in range(captions)]
    return jsonl(folder / "d.jsonl", *rows)


def test_fingerprint_follows_content_not_order_or_location(tmp_path: Path) -> None:
    path = make_set(tmp_path / "a", 3)
    fingerprint = read_dataset(path).fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "d.jsonl"
    moved.write_text("".join(reversed(moved.read_text().splitlines(keepends=True))))
    assert read_dataset(moved).fingerprint() == fingerprint
    raw = bytearray((tmp_path / "b" / "1.png").read_bytes())
    raw[-20] ^= 1  # one byte of one image
    (tmp_path / "b" / "1.png").write_bytes(bytes(raw))
    assert read_dataset(moved).fingerprint() != fingerprint
    moved.write_text(moved.read_text().replace("image 0 caption 0", "image 0 caption zero"))
    (tmp_path / "b" / "1.png").write_bytes((tmp_path / "a" / "1.png").read_bytes())
    assert read_dataset(moved).fingerprint() != fingerprint


def test_fingerprint_sees_an_image_changed_after_reading(tmp_path: Path) -> None:
    path = make_set(tmp_path, 2)
    data = read_dataset(path)
    before = data.fingerprint()
    png(tmp_path / "0.png", "gray", size=(4, 4))
    os.utime(tmp_path / "0.png", ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert data.fingerprint() != before


def test_split_is_deterministic_grouped_and_order_independent(tmp_path: Path) -> None:
    path = make_set(tmp_path, 10, captions=3)
    data = read_dataset(path)
    train, held = data.split(0.2, seed=1)
    assert len(train) + len(held) == len(data) == 30
    assert 6 <= len(held) <= 9
    assert {r.image for r in train}.isdisjoint({r.image for r in held})
    assert list(held) == [r for r in data if r in set(held)]  # the records' order is kept
    again = data.split(0.2, seed=1)
    assert list(again[0]) == list(train) and list(again[1]) == list(held)
    shuffled = jsonl(tmp_path / "shuffled.jsonl", *reversed([json.loads(x) for x in path.read_text().splitlines()]))
    held_shuffled = read_dataset(shuffled).split(0.2, seed=1)[1]
    assert {(r.image, r.target) for r in held_shuffled} == {(r.image, r.target) for r in held}
    seeds = {frozenset(r.image for r in data.split(0.2, seed=s)[1]) for s in range(8)}
    assert len(seeds) > 1
    assert data.split(0.0)[1].records == () and len(data.split(0.0)[0]) == 30


def test_split_holds_out_at_least_one_and_keeps_at_least_one(tmp_path: Path) -> None:
    data = read_dataset(make_set(tmp_path, 2, captions=1))
    for fraction in (0.01, 0.99):
        train, held = data.split(fraction)
        assert len(train) == 1 and len(held) == 1
    with pytest.raises(OptionError, match="eval_fraction"):
        data.split(1.0)
    rows = [{"image": "0.png", "caption": "a"}, {"image": "0.png", "caption": "b"}]
    one = read_dataset(jsonl(tmp_path / "one.jsonl", *rows))
    with pytest.raises(DataError, match="1 distinct image"):
        one.split(0.5)


def test_identical_images_under_two_names_stay_together(tmp_path: Path) -> None:
    for name in ("x.png", "copy-of-x.png"):
        png(tmp_path / name, "red")
    for i in range(6):
        png(tmp_path / f"{i}.png", "blue", size=(4 + i, 4))
    rows = [{"image": f"{i}.png", "caption": "c"} for i in range(6)]
    rows += [{"image": "x.png", "caption": "x"}, {"image": "copy-of-x.png", "caption": "x again"}]
    data = read_dataset(jsonl(tmp_path / "d.jsonl", *rows))
    for seed in range(6):
        train, held = data.split(0.3, seed=seed)
        sides = {name for part, name in ((train, "train"), (held, "eval")) for r in part if "x" in Path(r.image).name}
        assert len(sides) == 1


# --- examples and image checks -----------------------------------------------------------------


def test_examples_render_questions_with_the_family_and_load_lazily(tmp_path: Path) -> None:
    png(tmp_path / "a.png", "green", size=(9, 7))
    png(tmp_path / "b.png", "blue")
    data = read_dataset(jsonl(tmp_path / "d.jsonl", {"image": "a.png", "caption": "a green square"},
                              {"image": "a.png", "question": " how many shapes? ", "answer": "one"},
                              {"image": "b.png", "caption": "blue"}))
    examples = data.examples(OPT)
    assert len(examples) == 3
    caption, question = examples[0], examples[1]
    assert (caption.prompt, caption.target) == ("", "a green square")
    assert (question.prompt, question.target) == ("Question: how many shapes? Answer:", "one")
    assert question.image.mode == "RGB" and question.image.size == (9, 7)
    assert question.image.getpixel((0, 0)) == COLORS["green"]
    assert data.examples("t5")[1].prompt == T5.render_question("how many shapes?")
    assert pickle.loads(pickle.dumps(examples))[1].prompt == question.prompt
    assert [e.target for e in examples[1:]] == ["one", "blue"]
    (tmp_path / "b.png").unlink()  # read only when indexed
    with pytest.raises(DataError, match=r"d\.jsonl:3: .*b\.png: file not found"):
        examples[2]
    with pytest.raises(OptionError, match="unknown model family 'llama'"):
        data.examples("llama")


def test_check_images_drops_records_with_corrupt_images(tmp_path: Path) -> None:
    png(tmp_path / "good.png")
    (tmp_path / "text.png").write_text("not an image at all")
    noisy = io.BytesIO()
    Image.frombytes("RGB", (32, 32), bytes(range(256)) * 12).save(noisy, "PNG")
    (tmp_path / "cut.png").write_bytes(noisy.getvalue()[: len(noisy.getvalue()) * 3 // 4])
    path = jsonl(tmp_path / "d.jsonl", {"image": "good.png", "caption": "fine"},
                 {"image": "text.png", "caption": "broken"}, {"image": "cut.png", "caption": "cut"},
                 {"image": "text.png", "question": "what?", "answer": "broken"}, "{bad")
    data = read_dataset(path)
    checked = data.check_images(threads=2)
    assert [r.target for r in checked] == ["fine"]
    found = problems(checked)
    assert found[f"{path}:5"].startswith("not valid JSON")  # what reading skipped stays
    assert found[f"{path}:2"] == f"{tmp_path / 'text.png'}: not an image (got text)"
    assert found[f"{path}:4"] == found[f"{path}:2"]
    assert found[f"{path}:3"] == f"{tmp_path / 'cut.png'}: truncated or corrupt image"
    assert len(data) == 4  # the original is unchanged
    with pytest.raises(DataError, match=r"d\.jsonl:2: .*text\.png: not an image"):
        data.check_images(strict=True)


def test_a_csv_quote_never_closed_is_an_error_naming_its_line(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = tmp_path / "d.csv"
    path.write_text('image,caption\na.png,a red square\na.png,"a red circle\nb.png,a blue square\n')
    with pytest.raises(DataError, match=r"d\.csv:3: bad CSV \(unexpected end of data\)"):
        read_dataset(path)


def test_a_caption_or_answer_without_words_is_skipped(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = jsonl(tmp_path / "d.jsonl", {"image": "a.png", "caption": "--"},
                 {"image": "a.png", "question": "what?", "answer": "?!"}, {"image": "a.png", "caption": "a 2"})
    data = read_dataset(path)
    assert [r.target for r in data] == ["a 2"]
    assert problems(data) == {f"{path}:1": "caption '--' has no words", f"{path}:2": "answer '?!' has no words"}


# --- hostile input ----------------------------------------------------------------------------


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_NUMBER = "9" * 5_000


def test_a_jsonl_line_too_deep_or_with_a_huge_number_is_skipped_not_the_whole_file(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = jsonl(tmp_path / "d.jsonl", {"image": "a.png", "caption": "one"}, DEEP,
                 '{"image": "a.png", "caption": "two", "n": ' + HUGE_NUMBER + "}", {"image": "a.png", "caption": "three"})
    data = read_dataset(path)
    assert [r.target for r in data] == ["one", "three"]
    assert problems(data) == {f"{path}:2": "nested more than 64 levels deep",
                              f"{path}:3": "a number of 5,000 digits (at most 100)"}
    with pytest.raises(DataError, match=r"d\.jsonl:2: nested more than 64 levels deep$"):
        read_dataset(path, strict=True)


@pytest.mark.parametrize("text, reason", [
    ('{"images": [], "annotations": [], "x": ' + DEEP + "}", "nested more than 64 levels deep"),
    ('{"images": [{"id": ' + HUGE_NUMBER + "}], \"annotations\": []}", "a number of 5,000 digits"),
    ("[" + HUGE_NUMBER + "]", "a number of 5,000 digits"),  # a Label Studio export
    ('[{"image": "a.png", "caption": "\\ud800"}]', "a string with a lone surrogate escape"),
    (b"[\n\xff]", r":2: not UTF-8 text"),
])
def test_coco_and_label_studio_files_too_deep_or_with_huge_numbers_are_one_line_errors(tmp_path: Path, text, reason) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=r"export\.json.*" + reason.replace("(", r"\(")) as caught:
        read_dataset(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


def test_fields_of_wrong_types_and_odd_image_references_are_skipped_with_reasons(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    (tmp_path / "folder").mkdir()
    path = jsonl(tmp_path / "d.jsonl",
                 {"image": 7, "caption": "x"}, {"image": ["a.png"], "caption": "x"}, {"image": None, "caption": "x"},
                 {"image": "a.png", "caption": ["x"]}, {"image": "a.png", "caption": {"t": "x"}},
                 {"image": "a.png", "question": 1, "answer": "x"}, {"image": "a.png", "caption": True},
                 {"image": "folder", "caption": "x"}, {"image": "x" * 100_000, "caption": "x"},
                 {"image": "a\u0000b.png", "caption": "x"}, {"image": "../../nowhere.png", "caption": "x"},
                 {"image": "a.png", "caption": "y" * 1_000_000})
    found = problems(read_dataset(path))
    reasons = [found[f"{path}:{n}"] for n in range(1, 12)]
    assert reasons[:7] == ["image must be a string, got a number", "image must be a string, got a list",
                           "missing image", "caption must be a string, got a list",
                           "caption must be a string, got an object", "question must be a string, got a number",
                           "caption must be a string, got a boolean"]
    assert reasons[7] == f"image is a folder: {tmp_path / 'folder'}"
    assert reasons[8].startswith("image file not found: ") and len(reasons[8]) < 300  # the path is cut
    assert reasons[9].startswith("image file not found: ") and reasons[10].startswith("image file not found: ")
    assert len(read_dataset(path)) == 1  # a long caption is a caption


def test_a_coco_id_true_is_not_image_1(tmp_path: Path) -> None:
    png(tmp_path / "1.png")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.png"}],
                                "annotations": [{"image_id": True, "caption": "x"}, {"image_id": 1.0, "caption": "y"}]}))
    assert problems(read_dataset(path)) == {f"{path}:annotations[0]": "image_id True is not in 'images'",
                                            f"{path}:annotations[1]": "image_id 1.0 is not in 'images'"}


def test_special_files_and_non_paths_are_refused_without_blocking(tmp_path: Path, monkeypatch) -> None:
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    for path, reason in [(tmp_path / "fifo.jsonl", "not a regular file"), ("/dev/zero", "not a regular file"),
                         (tmp_path / "folder.jsonl", "a folder")]:
        with pytest.raises(DataError, match=f"^{path}: {reason}$"):
            read_dataset(path, format="jsonl")
    for paths in ([5], [None], [b"x.jsonl"]):
        with pytest.raises(DataError, match="a dataset file must be a path, got"):
            read_dataset(paths)  # type: ignore[arg-type]
    long = "a" * 5000 + ".jsonl"
    with pytest.raises(DataError, match="cannot read: File name too long") as caught:
        read_dataset(long)
    assert len(str(caught.value)) < 300
    monkeypatch.setattr("blip2plugins.training.data.MAX_FILE_BYTES", 10)
    jsonl(tmp_path / "big.jsonl", {"image": "a.png", "caption": "a caption"})
    with pytest.raises(DataError, match="big.jsonl: larger than 10 bytes"):
        read_dataset(tmp_path / "big.jsonl")


def test_a_csv_header_without_image_is_named_briefly(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(",".join(["x" * 5000] * 20) + "\n")
    with pytest.raises(DataError, match=r"no 'image' column \(columns: x{40}\.\.\., .* and 12 more\)") as caught:
        read_dataset(path)
    assert len(str(caught.value)) < 700
