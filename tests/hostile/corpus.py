"""A seeded generator of hostile inputs: images, texts, numbers, JSON documents, training files,
tampered adapter-store and index files, and HTTP bodies. Every function is deterministic given its
seed, and writes only under the folder it is given."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

SEED = 20260813


@dataclass(frozen=True)
class Case:
    """One hostile input: an id for pytest, the value, and what it is about (free text)."""

    id: str
    value: Any
    note: str = ""
    extra: dict = field(default_factory=dict)


def rng(salt: str = "") -> random.Random:
    return random.Random(f"{SEED}:{salt}")


# -- images ------------------------------------------------------------------------------------------------

def scene_png(seed: int = 0) -> bytes:
    from blip2plugins.demo import world

    out = io.BytesIO()
    world.render(world.random_scene(random.Random(seed))).save(out, format="PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int, *, depth: int = 8, color: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRCs), with a tiny (or given) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat if idat is not None else b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose logical screen and one frame claim ``width`` x ``height``, with almost no data."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;")


def _save(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_bytes() -> list[Case]:
    """Hostile image files as bytes: (id, bytes). Names say what they are; extensions may lie on purpose."""
    r = rng("images")
    good = scene_png()
    jpeg = _save(Image.open(io.BytesIO(good)).convert("RGB"), "JPEG", quality=90)
    base = Image.open(io.BytesIO(good)).convert("RGB")
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=50)
    apng = io.BytesIO()
    base.save(apng, format="PNG", save_all=True, append_images=[base.rotate(90)], duration=50)
    tiff_pages = io.BytesIO()
    base.save(tiff_pages, format="TIFF", save_all=True, append_images=[base])
    cases = [
        Case("truncated-png-half", good[: len(good) // 2]),
        Case("truncated-png-header", good[:33]),
        Case("truncated-png-8", good[:8]),
        Case("truncated-jpeg-half", jpeg[: len(jpeg) // 2]),
        Case("truncated-jpeg-soi", jpeg[:2]),
        Case("jpeg-no-eoi", jpeg[:-2]),
        Case("png-0x0", png_header(0, 0)),
        Case("png-1x100000", _save(Image.new("L", (1, 100000)), "PNG")),
        Case("png-100000x1", _save(Image.new("L", (100000, 1)), "PNG")),
        Case("png-bomb-header-100k", png_header(100000, 100000)),
        Case("png-bomb-header-max", png_header(2**31 - 1, 2**31 - 1)),
        Case("png-16bit-bomb-header", png_header(60000, 60000, depth=16)),
        Case("gif-bomb-header", gif_header(65535, 65535)),
        Case("text", b"hello, this is not an image\n"),
        Case("html", b"<!doctype html><html><body>404 Not Found</body></html>"),
        Case("empty", b""),
        Case("one-byte", b"\x89"),
        Case("random-bytes", bytes(r.getrandbits(8) for _ in range(4096))),
        Case("png-signature-then-garbage", b"\x89PNG\r\n\x1a\n" + bytes(r.getrandbits(8) for _ in range(512))),
        Case("palette", _save(base.convert("P"), "PNG")),
        Case("palette-transparency", _save(base.convert("P"), "PNG", transparency=0)),
        Case("cmyk-jpeg", _save(base.convert("CMYK"), "JPEG")),
        Case("i16-png", _save(Image.new("I;16", (32, 32), 65535), "PNG")),
        Case("i32-tiff", _save(Image.new("I", (32, 32), -5), "TIFF")),
        Case("float-tiff", _save(Image.new("F", (32, 32), float("nan")), "TIFF")),
        Case("la-png", _save(base.convert("LA"), "PNG")),
        Case("rgba-zero-alpha", _save(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")),
        Case("one-bit", _save(base.convert("1"), "PNG")),
        Case("animated-gif", gif.getvalue()),
        Case("animated-png", apng.getvalue()),
        Case("multipage-tiff", tiff_pages.getvalue()),
        Case("bmp", _save(base, "BMP")),
        Case("webp", _save(base, "WEBP")),
        Case("ico", _save(base, "ICO")),
        Case("1x1", _save(Image.new("RGB", (1, 1)), "PNG")),
        Case("png-bad-crc", good[:29] + bytes([good[29] ^ 0xFF]) + good[30:]),
    ]
    return cases


def image_objects() -> list[Case]:
    """Hostile in-memory image inputs for the Python API."""
    good = scene_png()
    closed = io.BytesIO(good)
    closed.close()
    return [
        Case("pil-0x0", Image.new("RGB", (0, 0)), "known: 0x0 image captioned"),
        Case("pil-1x1", Image.new("RGB", (1, 1))),
        Case("pil-1x20000", Image.new("L", (1, 20000))),
        Case("pil-mode-1-over-pixel-cap", Image.new("1", (9000, 9000))),
        Case("pil-i16", Image.new("I;16", (16, 16), 40000)),
        Case("pil-F-nan", Image.new("F", (16, 16), float("nan"))),
        Case("pil-F-inf", Image.new("F", (16, 16), float("inf"))),
        Case("pil-cmyk", Image.new("CMYK", (16, 16))),
        Case("pil-P-no-palette", Image.frombytes("P", (4, 4), b"\x07" * 16)),
        Case("pil-LAB", Image.new("LAB", (16, 16))),
        Case("pil-HSV", Image.new("HSV", (16, 16))),
        Case("bytes-empty", b""),
        Case("bytearray-garbage", bytearray(b"\x00\x01" * 100)),
        Case("memoryview-truncated", memoryview(good[:100])),
        Case("stream-closed", closed),
        Case("stream-truncated", io.BytesIO(good[:50])),
        Case("int", 42),
        Case("none", None),
        Case("float-nan", float("nan")),
        Case("dict", {"image": "x.png"}),
        Case("set", {1, 2}),
        Case("nested-list-in-list", [[good]]),
        Case("str-empty", ""),
        Case("str-nul", "a\x00b.png"),
        Case("str-lone-surrogate", "\ud800.png"),
        Case("str-huge", "x" * 100_000),
        Case("url-bad-port-0", "http://127.0.0.1:0/x.png"),
        Case("url-port-out-of-range", "http://127.0.0.1:99999/x.png"),
        Case("url-port-not-number", "http://127.0.0.1:abc/x.png"),
        Case("url-ipv6-unclosed", "http://[::1/x.png"),
        Case("url-space-host", "http://a b/x.png"),
        Case("url-no-host", "https:///x.png"),
        Case("url-ftp", "ftp://127.0.0.1/x.png"),
        Case("url-file", "file:///etc/passwd"),
        Case("url-huge-port", "http://127.0.0.1:" + "9" * 5000 + "/x.png"),
        Case("data-uri-bad-base64", "data:image/png;base64,!!!!"),
        Case("data-uri-empty", "data:,"),
        Case("data-uri-text", "data:text/plain,hello"),
        Case("data-uri-truncated-png", "data:image/png;base64," + base64.b64encode(good[:60]).decode()),
        Case("data-uri-bomb", "data:image/png;base64," + base64.b64encode(png_header(100000, 100000)).decode()),
        Case("s3-uri", "s3://bucket/key.png"),
        Case("dev-zero", "/dev/zero"),
        Case("dev-null", "/dev/null"),
        Case("proc-self-mem", "/proc/self/mem"),
        Case("root-dir", "/"),
    ]


def image_folder(folder: Path) -> dict[str, Path]:
    """Write every hostile image file (and some special files) into ``folder``; returns id -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for case in image_bytes():
        path = folder / f"{case.id}.png"
        path.write_bytes(case.value)
        paths[case.id] = path
    good = scene_png(1)
    extras = {
        "good": ("good.png", good),
        "png-named-jpg": ("png-named.jpg", good),
        "png-named-txt": ("png-named.txt", good),
        "png-no-extension": ("png-no-extension", good),
        "newline-name": ("new\nline.png", good),
        "leading-dash-name": ("-n.png", good),
    }
    for key, (name, data) in extras.items():
        (folder / name).write_bytes(data)
        paths[key] = folder / name
    undecodable = os.fsencode(str(folder)) + b"/bad-\xff\xfe.png"
    with open(undecodable, "wb") as out:
        out.write(good)
    paths["non-utf8-name"] = Path(os.fsdecode(undecodable))
    (folder / "dir.png").mkdir()
    paths["directory"] = folder / "dir.png"
    os.mkfifo(folder / "fifo.png")
    paths["fifo"] = folder / "fifo.png"
    os.symlink("/dev/zero", folder / "zero-link.png")
    paths["symlink-dev-zero"] = folder / "zero-link.png"
    os.symlink("missing-target.png", folder / "dangling.png")
    paths["dangling-symlink"] = folder / "dangling.png"
    os.symlink(folder / "loop-b.png", folder / "loop-a.png")
    os.symlink(folder / "loop-a.png", folder / "loop-b.png")
    paths["symlink-loop"] = folder / "loop-a.png"
    return paths


# -- texts and numbers --------------------------------------------------------------------------------------

def texts() -> list[Case]:
    r = rng("texts")
    return [
        Case("empty", ""),
        Case("spaces", "   \t  "),
        Case("nul", "what\x00 is this?"),
        Case("controls", "".join(chr(c) for c in range(32)) + "\x7f"),
        Case("lone-surrogate", "a \ud800 b"),
        Case("lone-low-surrogate", "\udfff"),
        Case("rtl-override", "\u202eabc\u202c how many shapes?"),
        Case("zero-width", "\u200b" * 2000),
        Case("bom", "\ufeffa red"),
        Case("combining", "a" + "\u0301" * 5000),
        Case("emoji", "\U0001F600" * 500),
        Case("huge", "a red circle " * 20000),
        Case("one-huge-word", "x" * 200_000),
        Case("newlines", "line one\nline two\r\nthree\rfour"),
        Case("random-unicode", "".join(chr(r.randrange(0x20, 0x2FFFF)) for _ in range(300))
             .encode("utf-8", "replace").decode("utf-8", "replace")),
        Case("noncharacters", "\uffff\ufffe\U0010FFFF"),
        Case("format-injection", "%s%s%n {0} {__class__}"),
        Case("not-a-str-int", 123),
        Case("not-a-str-bytes", b"a red"),
        Case("not-a-str-none-in-list", [None]),
    ]


def bad_numbers() -> list[Case]:
    return [
        Case("nan", float("nan")), Case("inf", float("inf")), Case("-inf", float("-inf")),
        Case("1e-300", 1e-300), Case("5e-324", 5e-324), Case("1e308", 1e308), Case("-1", -1), Case("0", 0),
        Case("true", True), Case("str-1", "1"), Case("2**70", 2**70), Case("10**5000", 10**5000),
        Case("-(10**5000)", -(10**5000)), Case("half", 0.5),
    ]


GENERATION_OPTIONS = ("max_new_tokens", "min_new_tokens", "num_beams", "temperature", "top_p", "top_k",
                      "repetition_penalty", "no_repeat_ngram_size", "seed", "n", "length_penalty")
SAMPLING_ONLY = {"temperature", "top_p", "top_k", "seed"}


def cli_numbers() -> list[Case]:
    """Number-like command-line strings."""
    return [
        Case("nan", "nan"), Case("inf", "inf"), Case("-inf", "-inf"), Case("1e-300", "1e-300"),
        Case("-1", "-1"), Case("0", "0"), Case("2**70", str(2**70)), Case("5000-digits", "9" * 5000),
        Case("hex", "0x10"), Case("empty", ""), Case("underscore", "1_0"), Case("fullwidth", "\uff11"),
    ]


# -- JSON documents ---------------------------------------------------------------------------------------------

def deep_json(depth: int = 100_000, kind: str = "[") -> str:
    close = "]" if kind == "[" else "}"
    if kind == "[":
        return "[" * depth + close * depth
    return '{"a":' * depth + "1" + "}" * depth


def bad_json_texts() -> list[Case]:
    """JSON text that parsers and readers mishandle; each a complete document (str)."""
    return [
        Case("nested-100k-lists", deep_json(100_000)),
        Case("nested-100k-objects", deep_json(100_000, "{")),
        Case("int-5000-digits", '{"x": ' + "7" * 5000 + "}"),
        Case("int-4301-digits", '{"x": ' + "1" * 4301 + "}"),
        Case("float-5000-digits", '{"x": 1.' + "3" * 5000 + "}"),
        Case("exp-huge", '{"x": 1e999999}'),
        Case("nan-literal", '{"x": NaN}'),
        Case("lone-surrogate-escape", '{"x": "\\ud800"}'),
        Case("lone-surrogate-key", '{"\\udc00": 1}'),
        Case("top-level-list", "[1, 2, 3]"),
        Case("top-level-string", '"hello"'),
        Case("top-level-number", "42"),
        Case("top-level-null", "null"),
        Case("html", "<!DOCTYPE html><html><head><title>Login</title></head></html>"),
        Case("empty", ""),
        Case("truncated", '{"x": [1, 2'),
        Case("duplicate-keys", '{"x": 1, "x": {"y": 2}}'),
        Case("bom", '\ufeff{"x": 1}'),
    ]


def bad_json_bytes() -> list[Case]:
    return [Case(c.id, c.value.encode("utf-8", "surrogatepass")) for c in bad_json_texts()] + [
        Case("not-utf8", b'{"x": "\xff\xfe"}'),
        Case("utf16", '{"x": 1}'.encode("utf-16")),
        Case("nul-bytes", b'{"x": 1}\x00\x00'),
    ]


# -- training files -------------------------------------------------------------------------------------------

def training_files(folder: Path) -> list[Case]:
    """Hostile dataset files (JSONL, CSV, COCO, Label Studio exports) written into ``folder``, which also
    gets ``ok.png`` (a decodable image) and ``bad.png`` (truncated). Each case's value is the path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = scene_png(2)
    (folder / "ok.png").write_bytes(good)
    (folder / "bad.png").write_bytes(good[:40])
    ok = {"image": "ok.png", "caption": "a red circle"}
    cases: list[Case] = []

    def add(name: str, content: str | bytes, note: str = "") -> None:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        cases.append(Case(name, path, note))

    line = json.dumps(ok)
    # JSONL
    add("empty.jsonl", b"")
    add("bom-only.jsonl", b"\xef\xbb\xbf")
    add("blank-lines.jsonl", "\n\n  \n\t\n")
    add("not-utf8.jsonl", b'{"image": "ok.png", "caption": "\xff\xfe"}\n' + line.encode() + b"\n")
    add("null-line.jsonl", "null\n[]\n42\n\"s\"\n" + line + "\n")
    add("nested-line.jsonl", deep_json(100_000) + "\n" + line + "\n", "known: nested JSON in training JSONL")
    add("nested-object-line.jsonl", deep_json(100_000, "{") + "\n" + line + "\n", "known: nested JSON")
    add("int-5000-caption.jsonl", '{"image": "ok.png", "caption": ' + "9" * 5000 + "}\n", "known: 4300-digit ints")
    add("int-5000-image.jsonl", '{"image": ' + "9" * 5000 + ', "caption": "a red circle"}\n', "known: 4300-digit ints")
    add("lone-surrogate.jsonl", '{"image": "ok.png", "caption": "a \\ud800 red"}\n')
    add("lone-surrogate-image.jsonl", '{"image": "ok\\udfff.png", "caption": "a red"}\n')
    add("nan.jsonl", '{"image": "ok.png", "caption": NaN}\n{"image": "ok.png", "caption": Infinity}\n')
    add("caption-types.jsonl", "\n".join(json.dumps({"image": "ok.png", "caption": v}) for v in
                                           (1, 1.5, True, None, [], {}, ["a"], "", " ", "!!!", "\u200b")) + "\n")
    add("image-types.jsonl", "\n".join(json.dumps({"image": v, "caption": "a red"}) for v in
                                         (1, True, None, [], {}, "", " ", "ok.png\x00", "/dev/zero", "/",
                                          "../../../../etc/passwd", "bad.png", "/proc/self/mem",
                                          "http://127.0.0.1:99999/x.png", "http://[::1/x.png",
                                          "data:image/png;base64,!!!", "s3://b/k.png", "x" * 5000)) + "\n")
    add("qa-mixed.jsonl", "\n".join(json.dumps(d) for d in (
        {"image": "ok.png", "question": "q?"}, {"image": "ok.png", "answer": "a"},
        {"image": "ok.png", "caption": "c", "question": "q", "answer": "a"},
        {"image": "ok.png", "question": 5, "answer": "a"}, {"image": "ok.png", "question": "q", "answer": ["a"]})) + "\n")
    add("huge-line.jsonl", json.dumps({"image": "ok.png", "caption": "word " * 400_000}) + "\n")
    add("crlf-and-cr.jsonl", line + "\r\n" + line + "\r" + line + "\n")
    add("nul-in-line.jsonl", line[:-1] + "\x00}\n")
    add("many-duplicates.jsonl", (line + "\n") * 5000)
    add("unicode-line-separators.jsonl", line + "\u2028" + line + "\u0085" + line + "\n")
    add("UPPER.JSONL", line + "\n")
    add("trailing-garbage.jsonl", line + " trailing\n")
    # CSV
    add("empty.csv", b"")
    add("header-only.csv", "image,caption\n")
    add("no-image-column.csv", "picture,caption\nok.png,a red\n")
    add("unclosed-quote.csv", 'image,caption\nok.png,"a red circle\nok.png,b\n')
    add("nul.csv", "image,caption\nok.png,a\x00red\n")
    add("huge-field.csv", "image,caption\nok.png," + "a" * 200_000 + "\n")
    add("many-columns.csv", "image,caption\nok.png,a,b,c,d\n")
    add("not-utf8.csv", b"image,caption\nok.png,\xff\xfe\n")
    add("cr-only.csv", "image,caption\rok.png,a red\r")
    add("duplicate-columns.csv", "image,image,caption,caption\nok.png,bad.png,a,b\n")
    add("bom.csv", "\ufeffimage,caption\nok.png,a red\n")
    add("formula.csv", "image,caption\nok.png,=cmd|' /C calc'!A0\n")
    add("weird-delimiter.csv", "image;caption\nok.png;a red\n")
    add("utf16.csv", "image,caption\nok.png,a red\n".encode("utf-16"))
    add("binary.csv", bytes(range(256)) * 8)
    # COCO
    images = [{"id": 1, "file_name": "ok.png"}]

    def coco(name: str, data: Any, note: str = "") -> None:
        add(name, data if isinstance(data, str) else json.dumps(data), note)

    coco("coco-images-not-list.json", {"images": {"id": 1}, "annotations": []})
    coco("coco-annotations-dict.json", {"images": images, "annotations": {"image_id": 1}})
    coco("coco-huge-image-id.json", '{"images": [{"id": ' + "1" * 5000 + ', "file_name": "ok.png"}], '
         '"annotations": [{"image_id": ' + "1" * 5000 + ', "caption": "a red"}]}', "known: 4300-digit ints in COCO")
    coco("coco-float-id.json", {"images": [{"id": 1.0, "file_name": "ok.png"}], "annotations": [{"image_id": 1.0, "caption": "a"}]})
    coco("coco-bool-id.json", {"images": [{"id": True, "file_name": "ok.png"}], "annotations": [{"image_id": 1, "caption": "a"}]})
    coco("coco-list-id.json", {"images": [{"id": [1], "file_name": "ok.png"}], "annotations": [{"image_id": [1], "caption": "a"}]})
    coco("coco-file-name-types.json", {"images": [{"id": i, "file_name": v} for i, v in enumerate(
        (None, 1, [], {}, "", "/dev/zero", "../../../etc/passwd", "bad.png"))],
        "annotations": [{"image_id": i, "caption": "a red"} for i in range(8)]})
    coco("coco-nested.json", '{"images": ' + deep_json(50_000) + ', "annotations": []}', "known: nested JSON")
    coco("coco-annotation-types.json", {"images": images, "annotations": [None, 1, "a", [], {"image_id": 1},
                                                                            {"image_id": 1, "caption": 5}]})
    coco("coco-duplicate-image-ids.json", {"images": images * 2, "annotations": [{"image_id": 1, "caption": "a"}]})
    coco("coco-missing-keys.json", {"images": images})
    # Label Studio exports
    coco("ls-list-of-strings.json", ["a", "b"])
    coco("ls-empty-list.json", [])
    coco("ls-data-not-dict.json", [{"data": "ok.png", "annotations": []}, {"data": None, "annotations": []}])
    coco("ls-annotations-not-list.json", [{"data": {"image": "ok.png"}, "annotations": {"result": []}}])
    coco("ls-result-garbage.json", [{"data": {"image": "ok.png"}, "annotations": [
        {"result": "x"}, {"result": [None, 1, {"type": 5}, {"type": "textarea"}, {"type": "textarea", "value": 1},
                                     {"type": "textarea", "value": {"text": [1, None, [], ""]}},
                                     {"type": "textarea", "value": {"text": "ok"}, "to_name": ["image"]},
                                     {"type": "textarea", "value": {"text": "ok"}, "to_name": {"a": 1}}]},
        None, 5, {"was_cancelled": "yes", "result": []}]}])
    coco("ls-image-types.json", [{"data": {"image": v}, "annotations": [
        {"result": [{"type": "textarea", "value": {"text": ["a red"]}}]}]}
        for v in (None, 1, [], {}, "", "/data/upload/1/x.png", "http://127.0.0.1:99999/x.png", "s3://b/k")])
    coco("ls-json-min.json", [{"image": "ok.png", "caption": [["nested"]]}, {"image": "ok.png", "caption": {}},
                              {"image": "ok.png"}, {"caption": "a"}, {"image": "ok.png", "caption": []}])
    coco("ls-huge-ints.json", '[{"id": ' + "5" * 5000 + ', "data": {"image": "ok.png"}, "annotations": []}]',
         "known: 4300-digit ints")
    coco("ls-nested.json", "[" + deep_json(100_000, "{") + "]", "known: nested JSON")
    # whole-file JSON oddities
    for c in bad_json_texts():
        add(f"json-{c.id}.json", c.value.encode("utf-8", "surrogatepass"))
    add("no-extension", line + "\n")
    add("wrong.txt", line + "\n")
    add("csv-as.jsonl", "image,caption\nok.png,a\n")
    add("jsonl-as.csv", line + "\n")
    add("jsonl-as.json", (line + "\n") * 3)
    return cases


def special_dataset_paths(folder: Path) -> list[Case]:
    """Dataset paths that are not regular files: reading them may block or never end."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jsonl")
    os.symlink("/dev/zero", folder / "zero.jsonl")
    os.symlink("/dev/urandom", folder / "urandom.csv")
    (folder / "dir.jsonl").mkdir()
    os.symlink("nowhere.jsonl", folder / "dangling.jsonl")
    return [Case("fifo", folder / "fifo.jsonl"), Case("dev-zero", folder / "zero.jsonl"),
            Case("dev-urandom", folder / "urandom.csv"), Case("directory", folder / "dir.jsonl"),
            Case("dangling", folder / "dangling.jsonl"), Case("missing", folder / "missing.jsonl"),
            Case("dev-null", Path("/dev/null"))]


# -- tampering ------------------------------------------------------------------------------------------------

def json_tamperings(valid: dict[str, Any]) -> list[Case]:
    """Replacements for a JSON file whose valid content is ``valid``: each value is the new file's bytes, or
    a callable(path) that replaces the file with something that is not a regular file."""
    def edit(**changes: Any) -> bytes:
        return json.dumps({**valid, **changes}).encode()

    first_key = next(iter(valid))
    cases = [Case(f"json-{c.id}", c.value) for c in bad_json_bytes()]
    cases += [
        Case("truncated-half", json.dumps(valid).encode()[: len(json.dumps(valid)) // 2]),
        Case("all-values-null", json.dumps({k: None for k in valid}).encode()),
        Case("all-values-5000-digit", ("{" + ", ".join(f'"{k}": ' + "8" * 5000 for k in valid) + "}").encode()),
        Case("all-values-nested", ("{" + ", ".join(f'"{k}": ' + deep_json(2000) for k in valid) + "}").encode()),
        Case("all-values-lone-surrogate", ("{" + ", ".join(f'"{k}": "\\ud800"' for k in valid) + "}").encode()),
        Case("all-values-list", json.dumps({k: [v] for k, v in valid.items()}).encode()),
        Case("first-key-huge-string", edit(**{first_key: "x" * 1_000_000})),
        Case("huge-file-padding", json.dumps(valid).encode() + b" " * 20_000_000),
        Case("empty-object", b"{}"),
        Case("directory", lambda p: (p.unlink(), p.mkdir())),
        Case("dangling-symlink", lambda p: (p.unlink(), os.symlink(p.parent / "nowhere", p))),
        Case("symlink-loop", lambda p: (p.unlink(), os.symlink(p, p))),
    ]
    return cases


SPECIAL_FILE_TAMPERINGS = [
    # These may block (FIFO) or never end (/dev/zero): run them in a subprocess with a timeout and a memory cap.
    Case("fifo", lambda p: (p.unlink(), os.mkfifo(p))),
    Case("symlink-dev-zero", lambda p: (p.unlink(), os.symlink("/dev/zero", p))),
]


def apply(case: Case, path: Path) -> None:
    if callable(case.value):
        case.value(path)
    else:
        path.write_bytes(case.value)


def safetensors_tamperings(data: bytes) -> list[Case]:
    """Damaged copies of a safetensors file ``data`` (header length, header JSON, tensors)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]

    def with_header(h: Any, payload: bytes = body) -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + payload

    names = [k for k in header if k != "__metadata__"]
    first = names[0]
    wrong_shape = {**header, first: {**header[first], "shape": [s + 1 for s in header[first]["shape"]]}}
    too_big = {**header, first: {**header[first], "data_offsets": [0, 2**62]}}
    renamed = {("x" + k if k != "__metadata__" else k): v for k, v in header.items()}
    wrong_dtype = {**header, first: {**header[first], "dtype": "F64"}}
    nan_body = bytearray(body)
    start, end = header[first]["data_offsets"]
    nan_body[start:end] = struct.pack("<f", float("nan")) * ((end - start) // 4)
    return [
        Case("truncated-half", data[: len(data) // 2], "known: truncated LoRA safetensors"),
        Case("truncated-header", data[:20]),
        Case("truncated-last-byte", data[:-1]),
        Case("empty", b""),
        Case("header-len-huge", struct.pack("<Q", 2**63) + data[8:]),
        Case("header-len-max", b"\xff" * 8 + data[8:]),
        Case("header-not-json", struct.pack("<Q", 16) + b"not json at all!" + body),
        Case("header-nested", with_header(json.loads("[" * 100 + "]" * 100))),
        Case("header-list", with_header([1, 2])),
        Case("wrong-shape", with_header(wrong_shape)),
        Case("offsets-beyond-file", with_header(too_big)),
        Case("unknown-tensor-names", with_header(renamed)),
        Case("wrong-dtype", with_header(wrong_dtype)),
        Case("nan-weights", data[: 8 + header_len] + bytes(nan_body)),
        Case("html", b"<html>not found</html>"),
    ]


# -- HTTP ----------------------------------------------------------------------------------------------------

def raw_bodies() -> list[Case]:
    """Raw request bodies that are not a usable JSON object."""
    return [c for c in bad_json_bytes() if c.id not in ("duplicate-keys", "bom")] + [
        Case("form-encoded", b"a=1&b=2"),
        Case("whitespace", b"   \n\t "),
    ]


SAFETENSORS_IDS = ["truncated-half", "truncated-header", "truncated-last-byte", "empty", "header-len-huge",
                   "header-len-max", "header-not-json", "header-nested", "header-list", "wrong-shape",
                   "offsets-beyond-file", "unknown-tensor-names", "wrong-dtype", "nan-weights", "html"]
