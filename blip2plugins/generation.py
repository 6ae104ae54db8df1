"""Generation options: one validated, hashable set of ``generate`` arguments per request.

Deterministic by default (greedy search). Every option is checked by name, type and range; a
mistake raises :class:`~blip2plugins.errors.OptionError` naming the option and the reason.
``stop`` holds stop strings: generation ends when one is produced, and the text is cut before it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping, Sequence

from .errors import OptionError
from .texts import shown

MAX_NEW_TOKENS_DEFAULT = 30
#: An encoder-decoder model (FlanT5) has no context limit on what it generates: without this cap a
#: model that never says end-of-text would run for hours.
MAX_NEW_TOKENS = 4096
#: Below this, sampling picks the likeliest token like greedy search, and the logits divided by the
#: temperature overflow float32 (a logit of 30 at 1e-38), which fails the batch.
MIN_TEMPERATURE = 1e-3
#: A penalty below 1 rewards every token already seen, the prompt's included (for OPT models the
#: end-of-text token too); below this the texts degenerate into repeats or come out empty.
MIN_REPETITION_PENALTY = 0.5
#: Beam scores are divided by ``length ** length_penalty``, which must stay a finite float32.
MAX_LENGTH_PENALTY = 10


@dataclass(frozen=True)
class GenerationOptions:
    """Validated generation options; ``n`` is the number of sequences returned per item.

    ``stop`` is a tuple of stop strings (a single string or a list is accepted and made a tuple).
    ``temperature``, ``top_p`` and ``top_k`` left at ``None`` are the checkpoint's (its
    ``generation_config``; transformers' defaults 1.0, 1.0 and 50 when it sets none), as
    ``generate`` uses them; they apply only when sampling.
    """

    max_new_tokens: int = MAX_NEW_TOKENS_DEFAULT
    min_new_tokens: int = 0
    num_beams: int = 1
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> GenerationOptions:
        """Validate ``options`` (after ``defaults``, e.g. a preset's) into a ``GenerationOptions``."""
        known = {f.name: f for f in fields(cls)}
        merged = {**(defaults or {}), **{k: v for k, v in options.items() if v is not None}}
        for name, value in merged.items():
            if name not in known:
                raise OptionError(f"unknown generation option {name!r}; known options: {', '.join(known)}")
            merged[name] = _check_type(name, value, _TYPES[name])
        opts = cls(**merged)
        opts._check_ranges(explicit=set(merged))
        return opts

    def updated(self, **options: Any) -> GenerationOptions:
        """These options with some replaced (``None`` values are ignored), validated like ``from_kwargs``."""
        known = {f.name for f in fields(self)}
        given = {k: v for k, v in options.items() if v is not None}
        for name, value in given.items():
            if name not in known:
                raise OptionError(f"unknown generation option {name!r}; known options: {', '.join(known)}")
            given[name] = _check_type(name, value, _TYPES[name])
        opts = replace(self, **given)
        opts._check_ranges(explicit=set(given))
        return opts

    def _check_ranges(self, explicit: set[str]) -> None:
        _at_least("max_new_tokens", self.max_new_tokens, 1)
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise OptionError(f"max_new_tokens must be <= {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        _at_least("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise OptionError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        _between("num_beams", self.num_beams, 1, 32)
        _between("n", self.n, 1, 32)
        if self.temperature is not None:
            _range("temperature", self.temperature, MIN_TEMPERATURE, 100,
                   "lower temperatures sample like greedy search, and logits divided by them overflow float32")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise OptionError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None:
            _at_least("top_k", self.top_k, 0)
        _range("repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY, 100,
               "1 is none, lower values reward repeats, and below the limit texts degenerate or come out empty")
        _at_least("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        if self.seed is not None:
            _between("seed", self.seed, 0, 2**64 - 1)  # torch.manual_seed's range
        sampling_only = sorted(explicit & {"temperature", "top_p", "top_k", "seed"})
        if sampling_only and not self.do_sample:
            raise OptionError(f"{', '.join(sampling_only)} only apply when sampling: pass do_sample=True")
        _range("length_penalty", self.length_penalty, -MAX_LENGTH_PENALTY, MAX_LENGTH_PENALTY)
        if self.n > self.num_beams > 1:
            raise OptionError(f"n={self.n} with beam search needs num_beams >= {self.n}, got {self.num_beams}")
        if self.n > 1 and not self.do_sample and self.n > self.num_beams:
            raise OptionError(f"n={self.n} needs do_sample=True or num_beams >= {self.n}")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate`` (only the ones that differ from plain greedy search)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                  "do_sample": self.do_sample, "num_return_sequences": self.n}
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:  # unset ones stay the checkpoint's generation config
            kwargs.update({name: value for name, value in (("temperature", self.temperature), ("top_p", self.top_p),
                                                           ("top_k", self.top_k)) if value is not None})
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.stop:
            kwargs["stop_strings"] = list(self.stop)  # generate also needs tokenizer= for these
        return kwargs

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to the first stop string, and whether one was found."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(found)], True) if found else (text, False)

    def as_dict(self) -> dict[str, Any]:
        """All options as a plain dict."""
        return asdict(self)


_TYPES: dict[str, type] = {
    "max_new_tokens": int, "min_new_tokens": int, "num_beams": int, "do_sample": bool,
    "temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float,
    "no_repeat_ngram_size": int, "length_penalty": float, "seed": int, "n": int, "stop": tuple,
}


def _check_type(name: str, value: Any, kind: type) -> Any:
    if kind is tuple:
        return _stop_strings(name, value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 256:  # beyond every range below, and too long to print
                raise OptionError(f"{name} must be a whole number of at most 256 bits, "
                                  f"got one of {value.bit_length():,} bits")
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int beyond any float
            raise OptionError(f"{name} must be a finite number, got an int of {value.bit_length():,} bits") from None
    raise OptionError(f"{name} must be {kind.__name__}, got {type(value).__name__} {shown(value)}")


def _stop_strings(name: str, value: Any) -> tuple[str, ...]:
    items: Sequence[Any] = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise OptionError(f"{name} must be a non-empty string or a list of non-empty strings, got {shown(value)}")
    return tuple(dict.fromkeys(items))


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise OptionError(f"{name} must be >= {low}, got {value}")


def _between(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise OptionError(f"{name} must be between {low} and {high}, got {value}")


def _range(name: str, value: float, low: float, high: float, why: str = "") -> None:
    """``value`` in ``[low, high]``; outside it, :class:`OptionError` (with ``why`` for a value below ``low``)."""
    if not low <= value <= high:
        reason = f" ({why})" if why and value < low else ""
        raise OptionError(f"{name} must be a finite number between {low:g} and {high:g}, got {value}{reason}")

