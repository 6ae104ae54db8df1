"""Streaming: one request's text handed out in deltas while the host's worker generates it."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from .errors import Blip2Error
from .types import Result


class TextStream:
    """The text of one request, handed out in deltas while the host's worker generates it.

    Iterate it (once) for the model's deltas; they join to ``result().raw_text``, the model's text
    before the ``process_result`` hooks. Text that a later token could still change is held back: an
    incomplete character, trailing spaces, and anything that may be the start of a stop string.
    Leaving the iteration early (or :meth:`close`) stops the generation at the next token.
    :meth:`processed` (instead of iterating) gives deltas that join to ``result().text``.
    """

    def __init__(self, future: Future[Result], tokenizer: Any, finish: Callable[[str], str], stop: tuple[str, ...],
                 *, hold: bool = False) -> None:
        self._future = future
        self._hold = hold
        self._tokens: queue.Queue[list[int] | None] = queue.Queue()
        self._tokenizer = tokenizer
        self._finish = finish
        self._stop = stop
        self._cancel = threading.Event()
        self.streamer = _QueueStreamer(self._tokens)
        self.cancelled = _Cancelled(self._cancel)
        future.add_done_callback(lambda _: self._tokens.put(None))

    def __iter__(self) -> Iterator[str]:
        ids: list[int] = []
        sent = ""
        try:
            while (chunk := self._tokens.get()) is not None:
                ids.extend(chunk)
                text = self._finish(self._settled(self._tokenizer.decode(ids, skip_special_tokens=True)))
                if len(text) > len(sent) and text.startswith(sent):
                    yield text[len(sent):]
                    sent = text
            final = self.result().raw_text or ""
            if len(final) > len(sent) and final.startswith(sent):
                yield final[len(sent):]
        finally:
            self._cancel.set()

    def processed(self) -> Iterator[str]:
        """Deltas that join to ``result().text``: the model's deltas as they come when no
        ``process_result`` hook was registered at the start, else the processed text in one delta
        once generation is over (a hook may rewrite anything)."""
        if not self._hold:
            yield from self
        elif text := self.result().text:
            yield text

    def result(self, timeout: float | None = None) -> Result:
        """The final result, once generation is over; raises :class:`Blip2Error` if it failed."""
        result = self._future.result(timeout)
        if not result.ok:
            raise Blip2Error(result.error)
        return result

    def close(self) -> None:
        """Stop the generation at the next token (the result keeps the text generated so far, and
        its ``finish_reason`` is ``"cancelled"`` if that cut it short)."""
        self._cancel.set()

    @property
    def closed(self) -> bool:
        """Whether the stream was closed (or left) before the generation ended."""
        return self._cancel.is_set()

    def _settled(self, raw: str) -> str:
        """The part of the raw generated text that later tokens cannot change."""
        found = [i for i in (raw.find(s) for s in self._stop) if i >= 0]
        if found:
            return raw[: min(found)]
        keep = len(raw)
        for stop in self._stop:  # the longest end of ``raw`` that begins a stop string
            for size in range(min(len(stop) - 1, len(raw)), 0, -1):
                if raw.endswith(stop[:size]):
                    keep = min(keep, len(raw) - size)
                    break
        return raw[:keep].rstrip("\ufffd").rstrip()


class _QueueStreamer(BaseStreamer):
    """Hands each step's new token ids to a queue; skips the prompt ``generate`` puts first."""

    def __init__(self, tokens: queue.Queue[list[int] | None]) -> None:
        self._tokens = tokens
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Nothing to flush: the stream ends when the request's future is done."""


class _Cancelled(StoppingCriteria):
    """Stops generation once the stream's reader has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)
