"""Chat prompts and conversations: one encoded image (or none) + turns -> prompt.

:func:`render_chat` is the one renderer of chat history: :class:`Conversation` and the adapters
(e.g. LangChain's chat model) use it, so every face of the host shows the model the same prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .errors import Blip2Error, OptionError
from .generation import GenerationOptions
from .texts import require_text
from .types import Result

if TYPE_CHECKING:
    import torch

    from .host import Host
    from .models import LoadedModel


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
    preamble = f"{system.strip()} " if system and system.strip() else ""
    for start in range(len(turns) + 1):
        text = preamble + loaded.family.render_chat(list(turns[start:]), question)
        if (length := loaded.count_tokens(text)) <= budget:
            return text, start
    context = "with the system text" if preamble else "alone"
    raise OptionError(f"question too long: {length} tokens {context}; {room_for_prompt(loaded, image, max_new_tokens)}")


def room_for_prompt(loaded: LoadedModel, image: bool, max_new_tokens: int) -> str:
    """What the context leaves for a prompt, and why: the end of a "too long" message."""
    taken = [f"the image's {loaded.num_query_tokens} query tokens"] if image else []
    if loaded.family is not None and loaded.family.decoder_only:
        taken.append(f"max_new_tokens ({max_new_tokens})")
    after = f" after {' and '.join(taken)}" if taken else ""
    budget = loaded.prompt_budget(image=image, max_new_tokens=max_new_tokens)
    return f"the model's {loaded.max_positions}-token context leaves {max(budget, 0)} tokens for the prompt{after}"


class Conversation:
    """Multi-turn visual question answering on one image (or, with ``features=None``, text only).

    Each question is rendered by :func:`render_chat` with the past turns, after the optional
    ``system`` preamble; the oldest turns are dropped when the prompt would not fit the language
    model's context (see :func:`render_chat`), and ``turns_dropped`` says how many the last question
    left out. ``image`` describes the image (each turn's ``Result.image``). A turn remembers the
    model's own answer (``Result.raw_text``), not the one that ``process_result`` hooks made, so
    later prompts show the model what it said.
    """

    def __init__(self, host: Host, features: torch.Tensor | None, *, system: str | None,
                 options: GenerationOptions, image: str | None = None) -> None:
        self.host = host
        self.features = features
        self.image = image
        self.system = system
        self.options = options
        self.turns: list[tuple[str, str]] = []
        self.turns_dropped = 0

    def prompt(self, question: str, options: GenerationOptions | None = None) -> str:
        """The prompt the model sees for ``question`` after the turns so far, trimmed to fit."""
        return self._fit(question, options or self.options)[0]

    def ask(self, question: str, **options: Any) -> Result:
        """Answer ``question`` about the image, then remember the turn."""
        opts = self.options.updated(**options)
        prompt, self.turns_dropped = self._fit(question, opts)
        result = self.host.submit_features("chat", self.features, prompt, opts, image=self.image).result()
        if not result.ok:
            raise Blip2Error(result.error)
        self.turns.append((question, result.raw_text or ""))
        return result

    def stream(self, question: str, **options: Any) -> Iterator[str]:
        """Answer ``question`` as text deltas; the turn is remembered at the end.

        The deltas join to the text :meth:`ask` would return (:meth:`TextStream.processed`): they
        come while generated, or, when a ``process_result`` hook is registered, in one piece at the end.
        """
        opts = self.options.updated(**options)
        prompt, self.turns_dropped = self._fit(question, opts)
        stream = self.host.stream("chat", self.features, prompt, opts, image=self.image)
        yield from stream.processed()
        self.turns.append((question, stream.result().raw_text or ""))

    def _fit(self, question: str, options: GenerationOptions) -> tuple[str, int]:
        return fit_chat(self.host.loaded, self.turns, question, system=self.system,
                        max_new_tokens=options.max_new_tokens, image=self.features is not None)

    def reset(self) -> None:
        """Forget the turns, keep the encoded image."""
        self.turns.clear()
        self.turns_dropped = 0
