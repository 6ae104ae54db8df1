"""The worker: the one thread that runs the model.

Callers queue requests (:class:`Generate`, :class:`Encode`, :class:`EmbedText`, :class:`Match`,
:class:`Swap`); the worker takes up to ``max_batch_size`` compatible ones (waiting at most
``max_wait`` while callers are still preparing theirs), runs them as one batch, and sets each
request's future. A batch that fails runs again item by item, so only the culprit fails. It
generates, scores and names why each sequence ended; the ``process_result`` step it is given
(the plugin hooks, in the host) finishes each result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable

import torch
from transformers import StoppingCriteriaList

from . import models, retrieval
from .errors import Blip2Error, PluginError
from .generation import GenerationOptions
from .streaming import TextStream
from .types import Result

log = logging.getLogger("blip2plugins.host")
#: Put on the queue to stop the worker once the requests before it are done.
STOP = object()


@dataclass(eq=False)
class Generate:
    task: str
    prompt: str
    options: GenerationOptions
    pixel_values: torch.Tensor | None = None
    features: torch.Tensor | None = None
    text_only: bool = False
    image: str | None = None
    stream: TextStream | None = None
    timings: dict[str, float] = field(default_factory=dict)
    queued: float = field(default_factory=time.perf_counter)
    future: Future[Result] = field(default_factory=Future)

    def key(self) -> object:
        # Sampled requests run alone, so a seed reproduces the same text whatever else is queued; so do streams.
        if self.options.do_sample or self.stream is not None:
            return self
        return ("text" if self.text_only else "generate", self.options)


@dataclass(eq=False)
class Encode:
    """Image features: the language-model inputs (``itc=False``) or the retrieval model's ITC embeddings."""

    pixel_values: torch.Tensor
    itc: bool = False
    future: Future[torch.Tensor] = field(default_factory=Future)

    def key(self) -> object:
        return ("encode", self.itc)


@dataclass(eq=False)
class EmbedText:
    text: str
    future: Future[torch.Tensor] = field(default_factory=Future)

    def key(self) -> object:
        return "embed_text"


@dataclass(eq=False)
class Match:
    pixel_values: torch.Tensor
    text: str
    future: Future[float] = field(default_factory=Future)

    def key(self) -> object:
        return "match"


@dataclass(eq=False)
class Swap:
    """Replace the attached adapter between batches: requests queued before it finish on the old one."""

    adapter: str | None
    future: Future[str] = field(default_factory=Future)

    def key(self) -> object:
        return self


class Worker:
    """The thread that owns the model: it batches the queued requests and runs them.

    ``process_result(task, result)`` finishes each generated result; ``preparing()`` says how many
    callers are still preparing requests (the worker then waits up to ``max_wait`` for them).
    """

    def __init__(self, loaded: models.LoadedModel, *, max_batch_size: int, max_wait: float, batch_invariant: bool,
                 process_result: Callable[[str, Result], Result], preparing: Callable[[], int]) -> None:
        self.loaded = loaded
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.batch_invariant = batch_invariant
        self.process_result = process_result
        self._preparing = preparing
        self.queue: queue.Queue[Any] = queue.Queue()
        self.stats = {"batches": 0, "items": 0, "encoded": 0, "largest_batch": 0}
        self.thread = threading.Thread(target=self._serve, name="blip2-host", daemon=True)
        self.thread.start()

    def failure(self, task: str, prompt: str, error: str, image: str | None = None) -> Result:
        """The result of an item that failed."""
        return Result(task, None, None, self.loaded.preset.name, self.loaded.version, prompt=prompt, error=error, image=image)

    def _serve(self) -> None:
        pending: list[Any] = []
        stopping = False
        limit = 1 if self.batch_invariant else self.max_batch_size
        while pending or not stopping:
            if not pending:
                item = self.queue.get()
                if item is STOP:
                    return
                pending.append(item)
            deadline = time.perf_counter() + self.max_wait
            while not stopping and len(pending) < limit and not isinstance(pending[-1], Swap):
                wait = deadline - time.perf_counter() if self._preparing() else 0.0
                try:
                    item = self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait()
                except queue.Empty:
                    if self._preparing() and time.perf_counter() < deadline:
                        continue
                    break
                if item is STOP:
                    stopping = True
                else:
                    pending.append(item)
            if isinstance(pending[0], Swap):
                self._swap(pending.pop(0))
                continue
            barrier = next((i for i, p in enumerate(pending) if isinstance(p, Swap)), len(pending))
            key = pending[0].key()
            batch = [p for p in pending[:barrier] if p.key() == key][:limit]
            pending = [p for p in pending if p not in batch]
            self._run(batch)

    def _swap(self, request: Swap) -> None:
        try:
            if request.adapter is None:
                models.detach_adapter(self.loaded)
            else:
                models.attach_adapter(self.loaded, request.adapter)
        except Exception as exc:  # the old adapter still serves
            log.error("adapter swap to %s failed: %s", request.adapter, exc)
            request.future.set_exception(exc if isinstance(exc, Blip2Error) else Blip2Error(f"adapter swap failed: {exc}"))
        else:
            log.info("now serving %s", self.loaded.version)
            request.future.set_result(self.loaded.version)

    def _run(self, batch: list[Any]) -> None:
        try:
            with torch.inference_mode():
                if isinstance(batch[0], Generate):
                    self._generate(batch)
                else:
                    for request, row in zip(batch, self._retrieval_batch(batch)):
                        request.future.set_result(row)
        except Exception as exc:  # a failed batch fails its items, never the worker
            left = [request for request in batch if not request.future.done()]
            if len(left) > 1:  # find the culprit: the others must not fail with it
                log.warning("batch of %d failed (%s): running its items one by one", len(batch), exc)
                for request in left:
                    self._run([request])
                return
            log.exception("batch of %d failed", len(batch))
            for request in left:
                if not isinstance(request, Generate):
                    request.future.set_exception(Blip2Error(f"{type(request).__name__.strip('_').lower()} failed: {exc}"))
                else:
                    request.future.set_result(self.failure(request.task, request.prompt, f"generation failed: {exc}",
                                                            request.image))

    def _retrieval_batch(self, batch: list[Any]) -> list[Any]:
        """Run a batch of image encodings, text embeddings or matches; one output per request."""
        if isinstance(batch[0], Encode) and not batch[0].itc:
            self.stats["encoded"] += len(batch)
            return list(self._features(torch.stack([r.pixel_values for r in batch])))
        head = self._retrieval()
        net = head.model
        if isinstance(batch[0], Encode):
            self.stats["encoded"] += len(batch)
            return list(retrieval.image_embeddings(net, torch.stack([r.pixel_values for r in batch])).float().cpu())
        ids, mask = retrieval.tokenize(partial(self.loaded.tokenize, tokenizer=head.processor.tokenizer),
                                       [r.text for r in batch], head.max_text_tokens)
        if isinstance(batch[0], EmbedText):
            return list(retrieval.text_embeddings(net, ids, mask).float().cpu())
        vision = retrieval.vision_states(net, torch.stack([r.pixel_values for r in batch]))
        return retrieval.itm_logits(net, vision, ids, mask).float().softmax(dim=-1)[:, 1].tolist()

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        loaded = self.loaded
        pixel_values = pixel_values.to(loaded.device, loaded.dtype)
        return loaded.model.get_image_features(pixel_values=pixel_values).pooler_output

    def _generate(self, batch: list[Generate]) -> None:
        loaded, model = self.loaded, self.loaded.model
        started = time.perf_counter()
        todo = [r for r in batch if r.features is None and not r.text_only]
        self.stats["batches"] += 1
        self.stats["items"] += len(batch)
        self.stats["encoded"] += len(todo)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        if todo:
            for request, row in zip(todo, self._features(torch.stack([r.pixel_values for r in todo]))):
                request.features = row
        encoded = time.perf_counter()
        text_only = batch[0].text_only
        input_ids, attention_mask = self._encode_prompts([r.prompt for r in batch], image=not text_only)
        image_slots = input_ids == loaded.image_token_id
        counts = image_slots.sum(dim=1)
        expected = 0 if text_only else loaded.num_query_tokens
        if bool((counts != expected).any()):
            raise Blip2Error(f"image-token count per row {counts.tolist()} != {expected} query tokens")
        embeds = model.get_input_embeddings()(input_ids)
        if not text_only:
            features = torch.stack([r.features for r in batch]).to(embeds.device, embeds.dtype)
            embeds = embeds.masked_scatter(image_slots.unsqueeze(-1), features)
        inputs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if loaded.family.decoder_only:
            inputs["input_ids"] = input_ids
        options = batch[0].options
        if options.stop:
            inputs["tokenizer"] = loaded.processor.tokenizer
        stream = batch[0].stream
        if stream is not None:
            inputs.update(streamer=stream.streamer, stopping_criteria=StoppingCriteriaList([stream.cancelled]))
        if options.seed is not None:
            torch.manual_seed(options.seed)
        out = model.language_model.generate(**inputs, **options.generate_kwargs(), return_dict_in_generate=True,
                                            output_logits=True, output_scores=options.num_beams > 1)
        new_tokens = out.sequences[:, input_ids.shape[1]:] if loaded.family.decoder_only else out.sequences[:, 1:]
        generated = self._generated(new_tokens, options)
        scores = self._scores(out, new_tokens, generated, options)
        texts = loaded.processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        early = (generated.sum(dim=1) < options.max_new_tokens).tolist()
        ended = torch.isin(new_tokens, self._eos_ids(new_tokens.device)).any(dim=1).tolist()
        done = time.perf_counter()
        n = options.n
        for i, request in enumerate(batch):
            candidates, reasons = [], []
            for j in range(i * n, (i + 1) * n):
                text, stopped = options.cut(texts[j])
                candidates.append((self.text(request, text), float(scores[j])))
                reasons.append(finish_reason(stopped or ended[j], early[j], stream))
            if options.do_sample:
                order = sorted(range(n), key=lambda k: -candidates[k][1])
                candidates, reasons = [candidates[k] for k in order], [reasons[k] for k in order]
            timings = {**request.timings, "queue_s": started - request.queued, "encode_s": encoded - started,
                       "generate_s": done - encoded, "total_s": done - request.queued + request.timings.get("preprocess_s", 0.0)}
            try:
                result = self._processed(request.task, [Result(request.task, text, score, self.loaded.preset.name, self.loaded.version,
                                                          prompt=request.prompt, candidates=[(text, score)],
                                                          timings=dict(timings), finish_reason=reason, raw_text=text,
                                                          image=request.image)
                                                   for (text, score), reason in zip(candidates, reasons)])
            except PluginError as exc:  # that item fails; the batch and the worker go on
                result = self.failure(request.task, request.prompt, str(exc), request.image)
            request.future.set_result(result)

    def _encode_prompts(self, prompts: list[str], *, image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (unless ``image`` is false), then the padded prompt, as ``Blip2Processor`` builds them.

        Decoder-only models get left padding (generation continues from the last column). T5 gets
        right padding: its relative position buckets count pads lying between image and text
        tokens, so left-padded rows would not match one-by-one runs.
        """
        loaded = self.loaded
        side = "left" if loaded.family.decoder_only else "right"
        text = loaded.tokenize(prompts, padding=True, padding_side=side, return_tensors="pt")
        rows = len(prompts)
        queries = loaded.num_query_tokens if image else 0
        image = torch.full((rows, queries), loaded.image_token_id, dtype=text.input_ids.dtype)
        input_ids = torch.cat([image, text.input_ids], dim=1).to(loaded.device)
        attention_mask = torch.cat([torch.ones_like(image), text.attention_mask], dim=1).to(loaded.device)
        return input_ids, attention_mask

    def _scores(self, out: Any, new_tokens: torch.Tensor, generated: torch.Tensor,
                options: GenerationOptions) -> list[float]:
        """Confidence of each sequence: exp of the mean log-probability of its tokens, EOS included.

        Greedy and sampling use the model's raw probabilities; beam search uses the beam score
        (the length-normalised log-probability under the search's own processors).
        """
        if options.num_beams > 1:
            return out.sequences_scores.float().exp().tolist()
        logits = torch.stack(out.logits, dim=1).float()
        logp = logits.log_softmax(-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        mean = (logp * generated).sum(dim=1) / generated.sum(dim=1).clamp(min=1)
        return mean.exp().tolist()

    def _generated(self, new_tokens: torch.Tensor, options: GenerationOptions) -> torch.Tensor:
        """Which new tokens each row generated: up to its first EOS (included), and none of the pads
        that fill a row a stop string ended while others went on.

        A pad the model generates itself (T5's pad is id 0, an ordinary output) counts like any token.
        Fill pads only follow a row's end, so only a trailing run of pads after a stop string is left out.
        """
        eos = self._eos_ids(new_tokens.device)
        is_eos = torch.isin(new_tokens, eos).long()
        valid = (is_eos.cumsum(dim=1) - is_eos) == 0
        pad = self.loaded.model.language_model.generation_config.pad_token_id
        if not options.stop or pad is None or bool((eos == pad).any()):
            return valid
        trailing = (new_tokens == pad).flip(1).long().cumprod(dim=1).flip(1).bool()
        for row in torch.nonzero(trailing.any(dim=1) & ~is_eos.bool().any(dim=1)).flatten().tolist():
            text = self.loaded.processor.tokenizer.decode(new_tokens[row][~trailing[row]], skip_special_tokens=True)
            if options.cut(text)[1]:
                valid[row] &= ~trailing[row]
        return valid

    def _eos_ids(self, device: torch.device) -> torch.Tensor:
        eos = self.loaded.model.language_model.generation_config.eos_token_id
        return torch.tensor(eos if isinstance(eos, list) else [eos], device=device)

    def text(self, request: Generate, generated: str) -> str:
        if request.task == "caption" and request.prompt and self.loaded.family.decoder_only:
            return (request.prompt + generated).strip()
        return generated.strip()

    def _processed(self, task: str, candidates: list[Result]) -> Result:
        """The best candidate after the ``process_result`` hooks, each candidate passed through them on
        its own; its ``candidates`` are the processed ones, best first."""
        done = [self.process_result(task, candidate) for candidate in candidates]
        return replace(done[0], candidates=[(result.text, result.score) for result in done])

    def _retrieval(self) -> models.RetrievalModel:
        self.loaded.require("embed")
        assert self.loaded.retrieval is not None
        return self.loaded.retrieval


def finish_reason(stopped: bool, early: bool, stream: TextStream | None) -> str:
    """Why a sequence ended: ``stopped`` at EOS or a stop string in its text, ``early`` before
    ``max_new_tokens`` (a stream closed, or a stop string that began in the prompt)."""
    if stopped:
        return "stop"
    if not early:
        return "length"
    return "cancelled" if stream is not None and stream.closed else "stop"
