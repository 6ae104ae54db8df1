"""A conversation about one image: the image is encoded once, turns accumulate into the prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Blip2Error, OptionError
from .generation import GenerationOptions
from .types import Result

if TYPE_CHECKING:
    import torch

    from .host import Host


class Conversation:
    """Multi-turn visual question answering on one image.

    Each question is rendered with the past turns in the family's template (OPT:
    ``"Question: q1 Answer: a1. Question: q2 Answer:"``), after the optional ``system`` preamble.
    The oldest turns are dropped when the prompt would not fit the language model's context
    together with the image's query tokens and ``max_new_tokens``.
    """

    def __init__(self, host: Host, features: torch.Tensor, *, system: str | None, options: GenerationOptions) -> None:
        self.host = host
        self.features = features
        self.system = system
        self.options = options
        self.turns: list[tuple[str, str]] = []

    def prompt(self, question: str, options: GenerationOptions | None = None) -> str:
        """The prompt the model sees for ``question`` after the turns so far, trimmed to fit."""
        loaded = self.host.loaded
        budget = loaded.max_positions - loaded.num_query_tokens - (options or self.options).max_new_tokens
        tokenizer = loaded.processor.tokenizer
        for start in range(len(self.turns) + 1):
            text = loaded.family.render_chat(self.turns[start:], question)
            if self.system:
                text = f"{self.system.strip()} {text}"
            if len(tokenizer(text).input_ids) <= budget:
                return text
        raise OptionError(
            f"question too long: with the image's {loaded.num_query_tokens} query tokens and max_new_tokens it "
            f"does not fit the model's {loaded.max_positions}-token context"
        )

    def ask(self, question: str, **options: Any) -> Result:
        """Answer ``question`` about the image, then remember the turn."""
        opts = GenerationOptions.from_kwargs(options, self.options.as_dict()) if options else self.options
        result = self.host.submit_features("chat", self.features, self.prompt(question, opts), opts).result()
        if not result.ok:
            raise Blip2Error(result.error)
        self.turns.append((question, result.text or ""))
        return result

    def reset(self) -> None:
        """Forget the turns, keep the encoded image."""
        self.turns.clear()
