"""Prompts: what the model reads besides the image, rendered and checked before a request is queued.

One renderer of chat history (:func:`render_chat` / :func:`fit_chat`) serves :class:`~.chat.Conversation`,
:meth:`Host.render_chat <blip2plugins.host.Host.render_chat>` and so every front-end; :func:`check_prompt`
refuses a prompt that cannot run, for caption, ask and chat alike; :func:`room_for_prompt` says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .errors import OptionError
from .texts import require_text

if TYPE_CHECKING:
    from .families import Family
    from .models import LoadedModel

#: Prompts whose token counts a host remembers (then it starts again).
LENGTHS_KEPT = 4096


def render_chat(loaded: LoadedModel, turns: Sequence[tuple[str, str]], question: str, *,
                system: str | None = None, max_new_tokens: int, image: bool = True) -> str:
    """The prompt for ``question`` after past ``(question, answer)`` turns, trimmed to fit the context
    (:func:`fit_chat` without the count of turns dropped)."""
    return fit_chat(loaded, turns, question, system=system, max_new_tokens=max_new_tokens, image=image)[0]


def fit_chat(loaded: LoadedModel, turns: Sequence[tuple[str, str]], question: str, *,
             system: str | None = None, max_new_tokens: int, image: bool = True) -> tuple[str, int]:
    """The prompt for ``question`` after past ``(question, answer)`` turns, and how many of the
    oldest turns were dropped to fit the context.

    Turns use the family's template (OPT: ``"Question: q1 Answer: a1. Question: q2 Answer:"``), after
    the optional ``system`` preamble. The oldest turns are dropped until the prompt fits the language
    model's context with, when ``image`` is true, the image's query tokens and, for a decoder-only
    model, ``max_new_tokens``. Raises :class:`OptionError` when even the question alone (after the
    ``system`` preamble) does not fit.
    """
    budget = loaded.prompt_budget(image=image, max_new_tokens=max_new_tokens)
    if system is not None:
        require_text(system, "the system text", empty=True)
    for start in range(len(turns) + 1):
        text = chat_text(loaded.family, turns[start:], question, system)
        if (length := loaded.count_tokens(text)) <= budget:
            return text, start
    context = "with the system text" if system and system.strip() else "alone"
    raise OptionError(f"question too long: {length} tokens {context}; {room_for_prompt(loaded, image, max_new_tokens)}")


def chat_text(family: Family, turns: Sequence[tuple[str, str]], question: str, system: str | None = None) -> str:
    """The prompt of ``question`` after ``turns`` in the family's template, after the ``system``
    preamble (stripped) when there is one; :func:`fit_chat` trims its turns to fit."""
    preamble = f"{system.strip()} " if system and system.strip() else ""
    return preamble + family.render_chat(list(turns), question)


def room_for_prompt(loaded: LoadedModel, image: bool, max_new_tokens: int) -> str:
    """What the context leaves for a prompt, and why: the end of a "too long" message."""
    taken = [f"the image's {loaded.num_query_tokens} query tokens"] if image else []
    if loaded.family is not None and loaded.family.decoder_only:
        taken.append(f"max_new_tokens ({max_new_tokens})")
    after = f" after {' and '.join(taken)}" if taken else ""
    budget = loaded.prompt_budget(image=image, max_new_tokens=max_new_tokens)
    return f"the model's {loaded.max_positions}-token context leaves {max(budget, 0)} tokens for the prompt{after}"


def check_prompt(loaded: LoadedModel, prompt: object, max_new_tokens: int, *, image: bool,
                 lengths: dict[str, int]) -> None:
    """Refuse, before it joins a batch, a prompt that is not a string, holds the image token or does not
    fit the context (with the image's query tokens and, decoder-only, ``max_new_tokens``). ``lengths``
    remembers token counts between calls."""
    require_text(prompt, "a prompt", empty=True)
    assert isinstance(prompt, str)
    token = loaded.processor.image_token.content
    if token in prompt:
        raise OptionError(f"prompt {prompt[:60]!r} contains the image token {token!r}")
    length = lengths.get(prompt)
    if length is None:
        length = loaded.count_tokens(prompt)
        if len(lengths) > LENGTHS_KEPT:
            lengths.clear()
        lengths[prompt] = length
    if length > loaded.prompt_budget(image=image, max_new_tokens=max_new_tokens):
        raise OptionError(f"prompt {prompt[:60]!r} is too long ({length} tokens): "
                          f"{room_for_prompt(loaded, image, max_new_tokens)}")
