"""Conversations: multi-turn questions about one encoded image (or none), rendered by :mod:`.prompts`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from .errors import Blip2Error
from .generation import GenerationOptions
from .types import Result

if TYPE_CHECKING:
    import torch

    from .host import Host


class Conversation:
    """Multi-turn visual question answering on one image (or, with ``features=None``, text only).

    Each question is rendered by :meth:`Host.render_chat` with the past turns, after the optional
    ``system`` preamble; the oldest turns are dropped when the prompt would not fit the language
    model's context, and ``turns_dropped`` says how many the last question
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
        return self.host.render_chat(self.turns, question, system=self.system, max_new_tokens=options.max_new_tokens,
                                     image=self.features is not None)

    def reset(self) -> None:
        """Forget the turns, keep the encoded image."""
        self.turns.clear()
        self.turns_dropped = 0
