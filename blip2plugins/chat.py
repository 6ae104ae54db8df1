"""Chat prompts and conversations: one encoded image (or none) + turns -> prompt.

:func:`render_chat` is the one renderer of chat history: :class:`Conversation` and the adapters
(e.g. LangChain's chat model) use it, so every face of the host shows the model the same prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .errors import Blip2Error, OptionError
from .generation import GenerationOptions
from .types import Result

if TYPE_CHECKING:
    import torch

    from .host import Host
    from .models import LoadedModel


def render_chat(loaded: LoadedModel, turns: Sequence[tuple[str, str]], question: str, *,
                system: str | None = None, max_new_tokens: int, image: bool = True) -> str:
    """The prompt for ``question`` after past ``(question, answer)`` turns, trimmed to fit the context.

    Turns use the family's template (OPT: ``"Question: q1 Answer: a1. Question: q2 Answer:"``), after
    the optional ``system`` preamble. The oldest turns are dropped until the prompt fits the language
    model's context together with ``max_new_tokens`` and, when ``image`` is true, the image's query
    tokens. Raises :class:`OptionError` when even the question alone does not fit.
    """
    queries = loaded.num_query_tokens if image else 0
    budget = loaded.max_positions - queries - max_new_tokens
    tokenizer = loaded.processor.tokenizer
    preamble = f"{system.strip()} " if system and system.strip() else ""
    for start in range(len(turns) + 1):
        text = preamble + loaded.family.render_chat(list(turns[start:]), question)
        if len(tokenizer(text).input_ids) <= budget:
            return text
    image_part = f"the image's {queries} query tokens, " if image else ""
    raise OptionError(
        f"question too long: with {image_part}max_new_tokens ({max_new_tokens}) and the system text it does "
        f"not fit the model's {loaded.max_positions}-token context"
    )


class Conversation:
    """Multi-turn visual question answering on one image (or, with ``features=None``, text only).

    Each question is rendered by :func:`render_chat` with the past turns, after the optional
    ``system`` preamble; the oldest turns are dropped when the prompt would not fit the language
    model's context together with the image's query tokens and ``max_new_tokens``.
    """

    def __init__(self, host: Host, features: torch.Tensor | None, *, system: str | None,
                 options: GenerationOptions) -> None:
        self.host = host
        self.features = features
        self.system = system
        self.options = options
        self.turns: list[tuple[str, str]] = []

    def prompt(self, question: str, options: GenerationOptions | None = None) -> str:
        """The prompt the model sees for ``question`` after the turns so far, trimmed to fit."""
        return render_chat(self.host.loaded, self.turns, question, system=self.system,
                           max_new_tokens=(options or self.options).max_new_tokens, image=self.features is not None)

    def ask(self, question: str, **options: Any) -> Result:
        """Answer ``question`` about the image, then remember the turn."""
        opts = self.options.updated(**options)
        result = self.host.submit_features("chat", self.features, self.prompt(question, opts), opts).result()
        if not result.ok:
            raise Blip2Error(result.error)
        self.turns.append((question, result.text or ""))
        return result

    def stream(self, question: str, **options: Any) -> Iterator[str]:
        """Answer ``question`` as text deltas while they are generated; the turn is remembered at the end.

        The deltas join to the text :meth:`ask` would return.
        """
        opts = self.options.updated(**options)
        stream = self.host.stream("chat", self.features, self.prompt(question, opts), opts)
        yield from stream
        self.turns.append((question, stream.result().text or ""))

    def reset(self) -> None:
        """Forget the turns, keep the encoded image."""
        self.turns.clear()
