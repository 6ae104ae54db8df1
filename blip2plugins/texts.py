"""Checks on the texts callers hand the models: questions, prompts, system texts, texts to match."""

from __future__ import annotations

from typing import Any

from .errors import OptionError


def require_text(value: Any, what: str, *, empty: bool = False) -> str:
    """``value`` if it is a string a tokenizer can take (and, unless ``empty``, not blank), else
    :class:`OptionError` naming ``what`` and the reason."""
    if not isinstance(value, str):
        raise OptionError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (e.g. from argv)
        raise OptionError(f"{what} {value!r} is not valid UTF-8 text (at character {exc.start})") from None
    if not empty and not value.strip():
        raise OptionError(f"{what} is empty")
    return value
