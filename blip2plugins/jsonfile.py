"""One careful JSON reader for every file and answer the project reads: a size cap, a nesting limit,
bounded numbers and strings that are valid UTF-8, each refused with one line (with the line number
where the JSON itself is wrong) instead of a ``RecursionError`` or ``ValueError`` traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
"""Arrays and objects nested deeper than this are refused (no file the project reads needs 10)."""
MAX_NUMBER_CHARS = 100
"""A number written with more characters than this is refused (Python refuses ints of 4,300 digits
only when printing them, long after they were read)."""
MAX_FILE_BYTES = 256 * 1024 * 1024
"""The default cap on a JSON file's size."""


class JSONReadError(ValueError):
    """JSON that cannot be read safely; the message is one line without the source's name."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH, surrogates: bool = False) -> Any:
    """Parse ``data`` (bytes must be UTF-8; a BOM is skipped) with the limits above. ``surrogates``
    lets strings hold the lone surrogates U+DC80-U+DCFF (how Python's ``surrogateescape`` writes the
    bytes of file names that are not UTF-8); otherwise every lone surrogate is refused."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = bytes(data)[: exc.start].count(b"\n") + 1
            raise JSONReadError(f"line {line}: not UTF-8 text") from None
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise JSONReadError(f"line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise JSONReadError(f"nested more than {max_depth} levels deep") from None
    _check(value, max_depth, surrogates)
    return value


def load_file(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse the JSON file ``path``; every failure (missing, unreadable, too large, bad JSON)
    is a :class:`JSONReadError` whose message starts with the path. ``FileNotFoundError`` is passed on
    for callers that treat a missing file on their own."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise JSONReadError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise JSONReadError(f"{path}: larger than {max_bytes:,} bytes")
    try:
        return loads(data, max_depth=max_depth)
    except JSONReadError as exc:
        raise JSONReadError(f"{path}: {exc}") from None


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONReadError(f"a number of {len(text):,} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONReadError(f"a number of {len(text):,} characters (at most {MAX_NUMBER_CHARS})")
    return float(text)


def _constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity: what json.dumps writes for such floats


def _check(value: Any, max_depth: int, surrogates: bool) -> None:
    """Refuse nesting deeper than ``max_depth`` and, unless ``surrogates``, strings (keys included)
    that are not valid UTF-8 (lone surrogates from ``\\ud800`` escapes), without recursion."""
    errors = "surrogateescape" if surrogates else "strict"
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _utf8(item, errors)
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise JSONReadError(f"nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    _utf8(key, errors)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _utf8(text: str, errors: str) -> None:
    try:
        text.encode("utf-8", errors)
    except UnicodeEncodeError:
        raise JSONReadError(f"a string with a lone surrogate escape ({text[:40]!r})") from None
