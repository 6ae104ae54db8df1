"""Range and type checks for training settings, run when a config is made (before any model loads).

Each failure is an :class:`~blip2plugins.errors.OptionError` naming the setting, the range and the value.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from ..errors import OptionError

#: The seeds every random generator a run seeds accepts (numpy's are 32-bit).
MAX_SEED = 2**32 - 1


def whole(name: str, value: object, low: int, high: int | None = None) -> None:
    """``value`` is an int (not a bool) in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise OptionError(f"{name} must be a whole number, got {type(value).__name__} {shown(value)}")
    if value < low or (high is not None and value > high):
        wanted = f">= {low}" if high is None else f"between {low} and {high}"
        raise OptionError(f"{name} must be {wanted}, got {shown(value)}")


def real(name: str, value: object, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
         open_high: bool = False) -> None:
    """``value`` is a finite int or float (not a bool) from ``low`` to ``high`` (each bound included unless open)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise OptionError(f"{name} must be a number, got {type(value).__name__} {shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    above = low < number if open_low else low <= number
    below = number < high if open_high else number <= high
    if math.isfinite(number) and above and below:
        return
    if high == math.inf:
        bounds = "" if low == -math.inf else f" {'>' if open_low else '>='} {low:g}"
    else:
        bounds = f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    raise OptionError(f"{name} must be a finite number{bounds}, got {shown(value)}")


def texts(name: str, values: Sequence[object]) -> None:
    """``values`` is a list or tuple of non-empty strings."""
    if not isinstance(values, (list, tuple)):
        raise OptionError(f"{name} must be a list of strings, got {type(values).__name__} {shown(values)}")
    for value in values:
        if not isinstance(value, str) or not value:
            raise OptionError(f"{name} must hold non-empty strings, got {shown(value)}")


def regexes(name: str, patterns: Sequence[object]) -> None:
    """Every item of ``patterns`` is a regular expression that still compiles inside a group."""
    texts(name, patterns)
    for pattern in patterns:
        try:
            re.compile(f"(?:{pattern})")
        except re.error as exc:
            raise OptionError(f"{name} {shown(pattern)} is not a valid regular expression: {exc}") from None
        except RecursionError:
            raise OptionError(f"{name} {shown(pattern)} is nested too deeply") from None


def shown(value: object, limit: int = 80) -> str:
    """``value`` for a message: its ``repr`` cut to about ``limit`` characters; an int too long to
    print as its number of digits."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a number of about {value.bit_length() * 30103 // 100000:,} digits"
    try:
        text = repr(value)
    except ValueError:  # holds an int of more than 4,300 digits
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
