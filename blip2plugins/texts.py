"""Checks on the texts callers hand the models: questions, prompts, system texts, texts to match."""

from __future__ import annotations

from typing import Any

from .errors import OptionError


def shown(value: Any, most: int = 80) -> str:
    """``repr(value)`` cut to ``most`` characters, so that an error message stays one short line
    whatever the caller passed (an int too long to print is named as such)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits
        holder = "" if isinstance(value, int) else f"a {type(value).__name__} holding "
        return f"{holder}an integer of thousands of digits"
    return text if len(text) <= most else f"{text[:most]}... ({len(text):,} characters)"


def require_text(value: Any, what: str, *, empty: bool = False) -> str:
    """``value`` if it is a string a tokenizer can take (and, unless ``empty``, not blank), else
    :class:`OptionError` naming ``what`` and the reason."""
    if not isinstance(value, str):
        raise OptionError(f"{what} must be a string, got {type(value).__name__} {shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (e.g. from argv)
        raise OptionError(f"{what} {shown(value)} is not valid UTF-8 text (at character {exc.start})") from None
    if not empty and not value.strip():
        raise OptionError(f"{what} is empty")
    return value
