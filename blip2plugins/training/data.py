"""Training datasets: caption and question/answer pairs read from JSONL, CSV, COCO captions JSON
or Label Studio exports, checked record by record.

    data = read_dataset(["train.jsonl", "coco/captions.json"])
    print(data.summary())                       # "120 records (100 captions, 20 questions) from 2 files; ..."
    train_set, eval_set = data.check_images().split(0.1, seed=0)
    report = train(model, processor, train_set.examples("opt"), config)

Formats (chosen by extension, or by ``format=``):

* ``jsonl``: one object per line, ``{"image", "caption"}`` or ``{"image", "question", "answer"}``;
  blank lines are ignored, other keys too.
* ``csv``: a header row naming the same columns; an empty cell is a missing field.
* ``coco`` (``.json`` holding ``"images"`` and ``"annotations"``): one record per caption annotation.
* ``label-studio`` (``.json`` holding a list): a full export (TextArea results of annotations that
  were not cancelled; several texts in one result give several records), or the JSON-min export
  (flat objects like JSONL lines, where ``caption`` may be a list of texts).

Image references with a URL scheme (``https://...``, ``data:...``, ``s3://...``) are kept as they
are, for :func:`blip2plugins.images.load_image` and its plugin sources; other strings are paths,
relative to ``image_root`` if given, else to the dataset file's folder, and must exist. Texts are
whitespace-normalised. A bad record is skipped and reported as a :class:`Problem` (or raises
:class:`~blip2plugins.errors.DataError` with ``strict=True``); exact duplicates are dropped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, Union, overload

from ..errors import DataError, ImageError, OptionError
from ..families import FAMILIES, Family
from ..images import describe, load_image
from ..jsonfile import JSONReadError, loads
from .collate import Example

__all__ = ["CaptionDataset", "Format", "Problem", "Record", "read_dataset"]

Format = Literal["jsonl", "csv", "coco", "label-studio"]
PathInput = Union[str, "os.PathLike[str]"]

_FORMATS: tuple[str, ...] = ("jsonl", "csv", "coco", "label-studio")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "json"}
# ``scheme:`` with a scheme of two characters or more, so that ``C:\x`` stays a (Windows) path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
_FINGERPRINT_LENGTH = 16
#: A dataset file larger than this is refused (it is read whole).
MAX_FILE_BYTES = 1 << 30
# Opening never blocks (a FIFO waits for a writer otherwise) nor makes a terminal ours.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_LINE = re.compile(r"^line (\d+): ")  # how a JSONReadError names the line
_TWICE = object()  # a COCO image id listed more than once


@dataclass(frozen=True)
class Record:
    """One training pair: ``image`` is an absolute path or a URL, ``question`` is ``None`` for captions."""

    image: str
    target: str
    question: str | None
    where: str  # e.g. "data/train.jsonl:12", "captions.json:annotations[3]"


@dataclass(frozen=True)
class Problem:
    """A record that was left out, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class CaptionDataset(Sequence[Record]):
    """The records of one or more dataset files, with what was skipped and how many duplicates were dropped."""

    def __init__(
        self,
        records: Iterable[Record],
        *,
        sources: Sequence[str] = (),
        skipped: Sequence[Problem] = (),
        duplicates: int = 0,
        _digests: dict[str, tuple[tuple[int, int], str]] | None = None,
    ) -> None:
        self.records: tuple[Record, ...] = tuple(records)
        self.sources: tuple[str, ...] = tuple(sources)
        self.skipped: tuple[Problem, ...] = tuple(skipped)
        self.duplicates = duplicates
        # path -> ((size, mtime_ns), sha256 of its bytes), shared with the datasets derived from this one
        self._digests = {} if _digests is None else _digests

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Record, ...]: ...
    def __getitem__(self, index: int | slice) -> Record | tuple[Record, ...]:
        return self.records[index]

    def __repr__(self) -> str:
        return f"<CaptionDataset: {self.summary()}>"

    def summary(self) -> str:
        """E.g. ``"120 records (100 captions, 20 questions) from 2 files; 3 skipped, 2 duplicates"``."""
        questions = sum(r.question is not None for r in self.records)
        return (
            f"{_count(len(self), 'record')} ({_count(len(self) - questions, 'caption')}, "
            f"{_count(questions, 'question')}) from {_count(len(self.sources), 'file')}; "
            f"{len(self.skipped)} skipped, {_count(self.duplicates, 'duplicate')}"
        )

    def fingerprint(self) -> str:
        """A short sha256 hex digest of the records, whatever their order.

        Local images count by their bytes, not their paths: the same files elsewhere give the same
        fingerprint, and a changed image gives another. URLs count as written.
        """
        lines = sorted(json.dumps([self._image_key(r.image), r.question, r.target]) for r in self.records)
        digest = hashlib.sha256("\n".join(lines).encode("utf-8"))
        return digest.hexdigest()[:_FINGERPRINT_LENGTH]

    def split(self, eval_fraction: float, *, seed: int = 0) -> tuple[CaptionDataset, CaptionDataset]:
        """``(train, eval)``, with about ``eval_fraction`` of the records held out.

        All records of one image (by content, for local files) land on the same side; which images
        are held out depends only on ``seed`` and the images, not on the records' order. With
        ``eval_fraction > 0`` at least one record is held out and at least one kept, so at least
        two distinct images are needed. The parts keep the records' order; ``skipped`` and
        ``duplicates`` stay with the dataset that was read.
        """
        if not 0 <= eval_fraction < 1:
            raise OptionError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        if eval_fraction == 0:
            return self._subset(self.records), self._subset(())
        groups: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            groups.setdefault(self._image_key(record.image), []).append(i)
        if len(groups) < 2:
            raise DataError(
                f"cannot hold out {eval_fraction:g} of {_count(len(self), 'record')}: "
                f"they show {_count(len(groups), 'distinct image')}, and an image's records stay together"
            )
        order = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}\0{key}".encode("utf-8")).digest())
        wanted = max(1, round(eval_fraction * len(self)))
        held: set[int] = set()
        for key in order[:-1]:  # the last group always trains
            if len(held) >= wanted:
                break
            held.update(groups[key])
        train = [r for i, r in enumerate(self.records) if i not in held]
        held_out = [r for i, r in enumerate(self.records) if i in held]
        return self._subset(train), self._subset(held_out)

    def examples(self, family: Family | str) -> Sequence[Example]:
        """The records as training :class:`Example` s, loading each image when it is indexed.

        Questions are rendered with ``family.render_question``; captions get the prompt ``""``.
        An image that fails to load raises :class:`DataError` naming the record.
        """
        if isinstance(family, str):
            if family not in FAMILIES:
                raise OptionError(f"unknown model family {family!r}: expected one of {sorted(FAMILIES)}")
            family = FAMILIES[family]
        return _Examples(self.records, family)

    def check_images(self, *, strict: bool = False, threads: int = 4) -> CaptionDataset:
        """Decode every distinct image once (``threads`` at a time) and drop the records whose image fails.

        Each dropped record is added to ``skipped``; with ``strict`` the first failure (in record
        order) raises :class:`DataError` instead.
        """
        if threads < 1:
            raise OptionError(f"threads must be at least 1, got {threads}")
        images = list(dict.fromkeys(r.image for r in self.records))
        failures: dict[str, str] = {}
        pool = ThreadPoolExecutor(max_workers=threads)
        try:
            for image, failure in zip(images, pool.map(_image_failure, images)):
                if failure is not None:
                    if strict:
                        first = next(r for r in self.records if r.image == image)
                        raise DataError(str(Problem(first.where, failure)))
                    failures[image] = failure
        finally:
            pool.shutdown(cancel_futures=True)
        kept = [r for r in self.records if r.image not in failures]
        dropped = [Problem(r.where, failures[r.image]) for r in self.records if r.image in failures]
        return CaptionDataset(
            kept, sources=self.sources, skipped=(*self.skipped, *dropped), duplicates=self.duplicates,
            _digests=self._digests,
        )

    def drop(self, reason: Callable[[Record], str | None], *, strict: bool = False) -> CaptionDataset:
        """The records ``reason`` finds nothing wrong with; the others are added to ``skipped`` (with
        ``strict`` the first raises :class:`DataError` instead)."""
        kept, dropped = [], []
        for record in self.records:
            why = reason(record)
            if why is None:
                kept.append(record)
            elif strict:
                raise DataError(str(Problem(record.where, why)))
            else:
                dropped.append(Problem(record.where, why))
        return CaptionDataset(kept, sources=self.sources, skipped=(*self.skipped, *dropped),
                              duplicates=self.duplicates, _digests=self._digests)

    def _subset(self, records: Iterable[Record]) -> CaptionDataset:
        return CaptionDataset(records, sources=self.sources, _digests=self._digests)

    def _image_key(self, image: str) -> str:
        """``sha256:<hex>`` of a local file's bytes (cached while its size and mtime hold), else the URL."""
        if _URL.match(image):
            return image
        try:
            info = os.stat(image)
            stamp = (info.st_size, info.st_mtime_ns)
            cached = self._digests.get(image)
            if cached is None or cached[0] != stamp:
                digest = hashlib.sha256()
                with open(image, "rb") as file:
                    for chunk in iter(lambda: file.read(1 << 20), b""):
                        digest.update(chunk)
                cached = (stamp, digest.hexdigest())
                self._digests[image] = cached
        except OSError as exc:
            raise DataError(f"{image}: cannot read: {exc.strerror or exc}") from exc
        return "sha256:" + cached[1]


class _Examples(Sequence[Example]):
    """A lazy view of records as :class:`Example` s (picklable, for data-loader workers)."""

    def __init__(self, records: tuple[Record, ...], family: Family) -> None:
        self._records = records
        self._family = family

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> _Examples: ...
    def __getitem__(self, index: int | slice) -> Example | _Examples:
        if isinstance(index, slice):
            return _Examples(self._records[index], self._family)
        record = self._records[index]
        try:
            image = load_image(record.image)
        except ImageError as exc:
            raise DataError(str(Problem(record.where, str(exc)))) from exc
        prompt = "" if record.question is None else self._family.render_question(record.question)
        return Example(image, prompt, record.target)


def read_dataset(
    paths: PathInput | Sequence[PathInput],
    *,
    format: Format | None = None,
    strict: bool = False,
    image_root: PathInput | None = None,
) -> CaptionDataset:
    """Read one or more dataset files into one :class:`CaptionDataset`.

    ``format`` overrides the choice by extension for every file. Relative image paths resolve
    against ``image_root`` if given, else against each file's folder. A file that cannot be read
    or parsed as a whole raises :class:`DataError`; a bad record is skipped (``strict``: raises).
    """
    if format is not None and format not in _FORMATS:
        raise OptionError(f"unknown dataset format {format!r}: expected one of {list(_FORMATS)}")
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise DataError("no dataset files given")
    for path in files:
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise DataError(f"a dataset file must be a path, got {type(path).__name__} {describe(str(path))}")
    records: list[Record] = []
    skipped: list[Problem] = []
    seen: set[tuple[str, str | None, str]] = set()
    duplicates = 0
    for path in files:
        reader = _Reader(os.fspath(path), image_root, strict)
        reader.read(format)
        skipped.extend(reader.problems)
        for record in reader.records:
            key = (record.image, record.question, record.target)
            if key in seen:
                duplicates += 1
            else:
                seen.add(key)
                records.append(record)
    return CaptionDataset(records, sources=[os.fspath(p) for p in files], skipped=skipped, duplicates=duplicates)


class _Bad(Exception):
    """A record is bad; the message is the reason."""


class _Reader:
    """Reads one file into records and problems."""

    def __init__(self, path: str, image_root: PathInput | None, strict: bool) -> None:
        self.file = path
        self.path = describe(path)  # how messages name it: printable, long paths cut
        self.root = os.path.abspath(image_root if image_root is not None else os.path.dirname(os.path.abspath(path)))
        self.strict = strict
        self.records: list[Record] = []
        self.problems: list[Problem] = []
        self._resolved: dict[str, str] = {}

    def read(self, format: Format | None) -> None:
        kind: str | None = format
        if kind is None:
            kind = _EXTENSIONS.get(os.path.splitext(self.file)[1].lower())
            if kind is None:
                raise DataError(
                    f"{self.path}: unknown dataset format (expected .jsonl, .csv or .json, or give format=)"
                )
        if kind == "jsonl":
            self._jsonl()
        elif kind == "csv":
            self._csv()
        else:
            self._json(kind)

    def bad(self, where: str, reason: str) -> None:
        problem = Problem(where, reason)
        if self.strict:
            raise DataError(str(problem))
        self.problems.append(problem)

    def add(self, where: str, fields: Mapping[str, Any]) -> None:
        """One record from ``image`` and ``caption`` or ``question`` + ``answer`` fields, or a problem."""
        try:
            question, target = _pair(fields)
            image = self._image(fields.get("image"))
        except _Bad as exc:
            self.bad(where, str(exc))
            return
        self.records.append(Record(image, target, question, where))

    def _image(self, ref: object) -> str:
        ref = _text(ref, "image")
        if ref is None:
            raise _Bad("missing image")
        if _URL.match(ref):
            return ref
        if ref not in self._resolved:
            path = os.path.abspath(os.path.join(self.root, ref))
            if not os.path.isfile(path):
                raise _Bad(f"image {'is a folder' if os.path.isdir(path) else 'file not found'}: {describe(path)}")
            self._resolved[ref] = path
        return self._resolved[ref]

    def _bytes(self) -> bytes:
        """The file's bytes; a FIFO, device or folder is refused without blocking, and so is a file
        over :data:`MAX_FILE_BYTES`."""
        try:
            fd = os.open(self.file, _OPEN_FLAGS)
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
                raise DataError(f"{self.path}: {'a folder' if stat.S_ISDIR(mode) else 'not a regular file'}")
            with open(fd, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL character in the path
            raise DataError(f"{self.path}: cannot read: {exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise DataError(f"{self.path}: larger than {MAX_FILE_BYTES:,} bytes")
        return data

    def _text_of_file(self) -> str:
        data = self._bytes()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DataError(f"{self.path}:{line}: not UTF-8 text") from exc

    def _jsonl(self) -> None:
        for number, raw in enumerate(self._bytes().splitlines(), 1):
            where = f"{self.path}:{number}"
            if not raw.strip():
                continue
            try:
                fields = loads(raw)
            except JSONReadError as exc:  # bad JSON, bad bytes, deep nesting, a number of 5,000 digits
                self.bad(where, _LINE.sub("", str(exc)))
                continue
            if not isinstance(fields, dict):
                self.bad(where, f"not a JSON object (got {_json_type(fields)})")
                continue
            self.add(where, fields)

    def _csv(self) -> None:
        reader = csv.reader(io.StringIO(self._text_of_file(), newline=""), strict=True)
        start = 1
        try:
            header = [name.strip() for name in next(reader, [])]
            if not header:
                return
            if "image" not in header:
                raise DataError(f"{self.path}: the header has no 'image' column (columns: {_columns(header)})")
            start = reader.line_num + 1
            for row in reader:
                where, start = f"{self.path}:{start}", reader.line_num + 1
                if not row:
                    continue
                if len(row) > len(header):
                    self.bad(where, f"{len(row)} fields, but the header names {len(header)}")
                    continue
                self.add(where, {name: cell for name, cell in zip(header, row) if cell.strip()})
        except csv.Error as exc:  # e.g. a quote opened on line ``start`` and never closed
            raise DataError(f"{self.path}:{start}: bad CSV ({exc})") from exc

    def _json(self, kind: str) -> None:
        try:
            data = loads(self._bytes())
        except JSONReadError as exc:
            line = _LINE.match(str(exc))
            where = f"{self.path}:{line.group(1)}" if line else self.path
            raise DataError(f"{where}: {_LINE.sub('', str(exc))}") from None
        is_coco = isinstance(data, dict) and "images" in data and "annotations" in data
        if kind == "coco" or (kind == "json" and is_coco):
            if not is_coco:
                raise DataError(f"{self.path}: not a COCO captions file (no 'images' and 'annotations')")
            self._coco(data)
        elif isinstance(data, list):
            self._label_studio(data)
        elif kind == "label-studio":
            raise DataError(f"{self.path}: not a Label Studio export (expected a list of tasks)")
        else:
            raise DataError(
                f"{self.path}: unknown JSON dataset (expected COCO captions with 'images' and "
                "'annotations', or a Label Studio export: a list of tasks)"
            )

    def _coco(self, data: dict[str, Any]) -> None:
        images, annotations = data["images"], data["annotations"]
        if not isinstance(images, list) or not isinstance(annotations, list):
            raise DataError(f"{self.path}: 'images' and 'annotations' must be lists")
        files: dict[object, object] = {}  # image id -> file_name, or _TWICE
        for entry in images:
            if isinstance(entry, dict) and _is_id(entry.get("id")):
                key = entry["id"]
                files[key] = _TWICE if key in files else entry.get("file_name")
        for i, annotation in enumerate(annotations):
            where = f"{self.path}:annotations[{i}]"
            if not isinstance(annotation, dict):
                self.bad(where, f"not a JSON object (got {_json_type(annotation)})")
                continue
            image_id = annotation.get("image_id")
            if not _is_id(image_id) or image_id not in files:
                self.bad(where, f"image_id {image_id!r} is not in 'images'")
            elif files[image_id] is _TWICE:
                self.bad(where, f"image_id {image_id!r} is listed more than once in 'images'")
            else:
                self.add(where, {"image": files[image_id], "caption": annotation.get("caption")})

    def _label_studio(self, tasks: list[Any]) -> None:
        for i, task in enumerate(tasks):
            where = f"{self.path}:[{i}]"
            if not isinstance(task, dict):
                self.bad(where, f"not a JSON object (got {_json_type(task)})")
            elif "data" in task or "annotations" in task:
                self._label_studio_task(where, task)
            else:  # JSON-min: a flat object; a TextArea with several texts gives a list
                captions = task.get("caption")
                for caption in captions if isinstance(captions, list) and captions else [captions]:
                    self.add(where, {**task, "caption": caption})

    def _label_studio_task(self, where: str, task: dict[str, Any]) -> None:
        data, annotations = task.get("data"), task.get("annotations", [])
        if not isinstance(data, dict):
            self.bad(where, "'data' is not an object")
            return
        if not isinstance(annotations, list):
            self.bad(where, "'annotations' is not a list")
            return
        for a, annotation in enumerate(annotations):
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            results = annotation.get("result")
            for r, result in enumerate(results if isinstance(results, list) else []):
                if not isinstance(result, dict) or str(result.get("type", "")).lower() != "textarea":
                    continue
                here = f"{where}.annotations[{a}].result[{r}]"
                value = result.get("value")
                texts = value.get("text") if isinstance(value, dict) else None
                if isinstance(texts, str):
                    texts = [texts]
                if not isinstance(texts, list) or not texts:
                    self.bad(here, "TextArea result without text")
                    continue
                for text in texts:
                    self.add(here, {"image": _label_studio_image(data, result.get("to_name")), "caption": text})


def _is_id(value: object) -> bool:
    """Whether ``value`` can be a COCO image id: a number or a string (``true`` is not ``1``)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _label_studio_image(data: dict[str, Any], to_name: object) -> object:
    """The task's image: ``data[to_name]``, else ``data["image"]``, else its only string value."""
    if isinstance(to_name, str) and to_name in data:
        return data[to_name]
    if "image" in data:
        return data["image"]
    strings = [value for value in data.values() if isinstance(value, str)]
    return strings[0] if len(strings) == 1 else None


def _pair(fields: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(question, target)``: ``(None, caption)`` or ``(question, answer)``, or :class:`_Bad`."""
    caption = _text(fields.get("caption"), "caption")
    question = _text(fields.get("question"), "question")
    answer = _text(fields.get("answer"), "answer")
    if caption is not None:
        if question is not None or answer is not None:
            raise _Bad("has both a caption and a question/answer")
        return None, _worded(caption, "caption")
    if question is None and answer is None:
        raise _Bad("missing caption (or question and answer)")
    if answer is None:
        raise _Bad("question without an answer")
    if question is None:
        raise _Bad("answer without a question")
    return question, _worded(answer, "answer")


def _worded(text: str, name: str) -> str:
    """``text`` if it has a letter or digit (what caption metrics can score), else :class:`_Bad`."""
    if not any(c.isalnum() for c in text):
        raise _Bad(f"{name} {text!r} has no words")
    return text


def _text(value: object, name: str) -> str | None:
    """A field's whitespace-normalised text, ``None`` when it is absent; :class:`_Bad` when empty or not text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Bad(f"{name} must be a string, got {_json_type(value)}")
    text = " ".join(value.split())
    if not text:
        raise _Bad(f"empty {name}")
    return text


def _columns(header: list[str], shown: int = 8, width: int = 40) -> str:
    """The header's first column names, each cut to ``width`` characters, printable."""
    names = [describe(name[:width] + ("..." if len(name) > width else "")) for name in header[:shown]]
    return ", ".join(names) + (f" and {len(header) - shown} more" if len(header) > shown else "")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _image_failure(image: str) -> str | None:
    """Why ``image`` cannot be decoded, or ``None`` when it can."""
    try:
        load_image(image)
    except ImageError as exc:
        return str(exc)
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
