"""The model host: one loaded BLIP-2 serving captions, answers and chats to many callers.

One worker thread owns the model. Callers (any number of threads) load and preprocess their images
(lists in parallel, on a small thread pool), then queue requests; the worker gathers up to
``max_batch_size`` compatible requests and runs them as one batch. It waits for more (at most
``max_wait`` seconds) only while callers that have queued nothing yet are loading their images, so a
lone caller never waits and a long list streams through in full batches. Every caller, adapter and plugin gets batching for free, and results equal those of
one-by-one runs (same tokens).

Generation follows ``Blip2ForConditionalGeneration.generate`` step by step, but on image features
that can be computed once and reused: a chat encodes its image once for all turns. A request without
an image is answered by the language model alone (no image tokens). :meth:`Host.stream` hands out the
text of one request while it is generated.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar, overload

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.image_processing_backends import PilBackend

from . import models, plugins, retrieval
from .chat import Conversation, fit_chat, room_for_prompt
from .errors import Blip2Error, ModelLoadError, OptionError, PluginError, StoreError
from .generation import GenerationOptions
from .images import describe, load_image
from .store import parse_ref
from .texts import require_text, shown
from .types import ImageEmbedding, Result

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
#: ``fast_preprocess``: box-reduce to within 3x of the target before the bicubic pass (measured on a
#: 640x480 image to 48 px: 0.56 vs 1.65 ms, mean difference 0.11 grey levels, at most 4).
_REDUCING_GAP = 3.0
#: Default cap on loader threads: each holds one full-size decoded image (a 24 MP photo is ~100 MB).
_MAX_LOADERS = 16


@dataclass(eq=False)
class _Generate:
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
class _Encode:
    """Image features: the language-model inputs (``itc=False``) or the retrieval model's ITC embeddings."""

    pixel_values: torch.Tensor
    itc: bool = False
    future: Future[torch.Tensor] = field(default_factory=Future)

    def key(self) -> object:
        return ("encode", self.itc)


#: A chunk of image embeddings being computed: each with its worker future, or None when the image failed.
_Embeddings = list[tuple[ImageEmbedding, "Future[torch.Tensor] | None"]]


@dataclass(eq=False)
class _EmbedText:
    text: str
    future: Future[torch.Tensor] = field(default_factory=Future)

    def key(self) -> object:
        return "embed_text"


@dataclass(eq=False)
class _Match:
    pixel_values: torch.Tensor
    text: str
    future: Future[float] = field(default_factory=Future)

    def key(self) -> object:
        return "match"


@dataclass(eq=False)
class _Swap:
    """Replace the attached adapter between batches: requests queued before it finish on the old one."""

    adapter: str | None
    future: Future[str] = field(default_factory=Future)

    def key(self) -> object:
        return self


_STOP = object()
_OPEN: weakref.WeakSet[Host] = weakref.WeakSet()


@atexit.register
def _close_open_hosts() -> None:
    """Stop the workers of hosts nobody closed before the interpreter tears torch down: a worker
    thread still alive then made about one exit in twenty abort ("terminate called without an
    active exception", status 134)."""
    for host in list(_OPEN):
        host.close()


class Host:
    """A loaded BLIP-2 model serving ``caption``, ``ask`` and ``chat``, safe to share between threads.

    Single-item calls return a :class:`Result` and raise :class:`Blip2Error` on failure; list calls
    return one :class:`Result` per item, with ``error`` set on the items that failed.
    """

    def __init__(self, loaded: models.LoadedModel, *, max_batch_size: int = 32, max_wait: float = 0.05,
                 loader_threads: int | None = None, fast_preprocess: bool = False, batch_invariant: bool = False) -> None:
        _check_settings(max_batch_size, max_wait, loader_threads, batch_invariant)
        self.loaded = loaded
        self.fast_preprocess = fast_preprocess
        self.batch_invariant = batch_invariant
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._queue: queue.Queue[Any] = queue.Queue()
        self.loader_threads = loader_threads or min(_MAX_LOADERS, _usable_cpus())
        self._loader = ThreadPoolExecutor(self.loader_threads, "blip2-load")
        self._preparing = 0  # callers loading images that have queued nothing yet: the worker waits for them
        self._preparing_lock = threading.Lock()
        self._closed = False
        self._closing_lock = threading.Lock()  # nothing is queued behind the worker's stop signal
        self._prompt_lengths: dict[str, int] = {}
        self._stats = {"batches": 0, "items": 0, "encoded": 0, "largest_batch": 0}
        self._worker = threading.Thread(target=self._serve, name="blip2-host", daemon=True)
        self._worker.start()
        _OPEN.add(self)

    @classmethod
    def load(cls, model: str = "demo", *, device: str = "auto", dtype: str = "auto", quantize: str | None = None,
             adapter: str | None = None, retrieval: str | bool = True, max_batch_size: int = 32,
             max_wait: float = 0.05, loader_threads: int | None = None, fast_preprocess: bool = False,
             batch_invariant: bool = False) -> Host:
        """Load a preset name, a checkpoint folder or a hub id, optionally with an adapter.

        ``adapter`` is an adapter folder, or ``NAME`` / ``NAME@VERSION`` in the default adapter store
        (``BLIP2_ADAPTER_STORE``). ``retrieval`` adds the retrieval model that ``match``,
        ``similarity`` and ``embed_*`` use (see :func:`models.load`): by default the preset's own.

        Batches hold at most ``max_batch_size`` requests; the worker waits at most ``max_wait``
        seconds for a batch to fill (see the module docs). Images are read and resized on
        ``loader_threads`` threads (default: the CPUs this process may use, at most 16); Pillow
        releases the GIL while it decodes and resizes, so they run in parallel.

        ``fast_preprocess=True`` trades exactness for speed on large images: JPEGs decode at a reduced
        scale and the resize reduces by whole factors (box filter) before the bicubic pass. Pixels then
        differ slightly from the processor's (a few grey levels), so results may differ from plain
        transformers'; by default the host's pixel values equal the processor's exactly.

        ``batch_invariant=True`` runs every request in a batch of its own, so that its result never
        depends on what else is queued. In float32 batching already gives the tokens of one-by-one
        runs; in float16 and bfloat16 a row's padding changes its scores slightly, and bitsandbytes
        picks 8-bit outlier columns across the batch. It costs the batching speed-up
        (``benchmarks/batch_invariance.py`` measures both).
        """
        _check_settings(max_batch_size, max_wait, loader_threads, batch_invariant)  # before the model loads
        loaded = models.load(model, device=device, dtype=dtype, quantize=quantize, retrieval=retrieval)
        if adapter is not None:
            models.attach_adapter(loaded, _find_adapter(loaded, adapter))
        return cls(loaded, max_batch_size=max_batch_size, max_wait=max_wait, loader_threads=loader_threads,
                   fast_preprocess=fast_preprocess, batch_invariant=batch_invariant)

    @property
    def name(self) -> str:
        return self.loaded.preset.name

    @property
    def model_version(self) -> str:
        return self.loaded.version

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this host can do (``caption``, ``ask``, ``chat``, ``match``, ``similarity``, ``embed``)."""
        return self.loaded.tasks

    @property
    def retrieval_name(self) -> str:
        """Name of the retrieval model (the one that embeds images for an index)."""
        return self._retrieval("embed").name

    @property
    def retrieval_source(self) -> str:
        """Where the retrieval model was loaded from (hub id or absolute folder): ``Host.load`` takes it."""
        return self._retrieval("embed").source

    @property
    def retrieval_version(self) -> str:
        """Version of the retrieval model: an index built by another version must be rebuilt."""
        return self._retrieval("embed").version

    @property
    def embedding_dim(self) -> int:
        """Size ``D`` of the ITC embeddings."""
        return self._retrieval("embed").embedding_dim

    @property
    def num_query_tokens(self) -> int:
        """Query tokens ``Q`` of the retrieval model (vectors per image embedding)."""
        return self._retrieval("embed").num_query_tokens

    # -- prompts: what front-ends need to build and size their own ----------------------------

    @property
    def context_size(self) -> int:
        """The most tokens the language model reads: image query tokens, prompt and, for a
        decoder-only model, the tokens it generates."""
        return self.loaded.max_positions

    def require(self, task: str) -> None:
        """Raise :class:`ModelLoadError`, naming the model and what it can do, unless it can do ``task``."""
        self.loaded.require(task)

    def render_question(self, question: str) -> str:
        """The prompt that asks ``question`` in the model family's template (what :meth:`ask` sends)."""
        self.loaded.require("ask")
        require_text(question, "a question", empty=True)
        return self.loaded.family.render_question(question)

    def render_chat(self, turns: Sequence[tuple[str, str]], question: str, *, system: str | None = None,
                    max_new_tokens: int | None = None, image: bool = True) -> tuple[str, int]:
        """The chat prompt for ``question`` after past ``(question, answer)`` turns (what :meth:`chat`
        sends), and how many of the oldest turns it leaves out to fit the context with the image's
        query tokens (``image``) and ``max_new_tokens`` (default: the preset's). Raises
        :class:`OptionError` when the question alone does not fit."""
        self.loaded.require("chat")
        budget = self.options().max_new_tokens if max_new_tokens is None else max_new_tokens
        return fit_chat(self.loaded, turns, question, system=system, max_new_tokens=budget, image=image)

    def count_tokens(self, text: str, *, image: bool = False, special: bool = True) -> int:
        """How many tokens the language model reads for ``text`` (with its BOS/EOS when ``special``),
        plus the image's query tokens when ``image``."""
        return self.loaded.count_tokens(text, special=special) + (self.loaded.num_query_tokens if image else 0)

    def token_ids(self, text: str, *, special: bool = False) -> list[int]:
        """The token ids of ``text`` by the model's own tokenizer."""
        return list(self.loaded.tokenize(text, add_special_tokens=special).input_ids)

    # -- public tasks -------------------------------------------------------------------------

    def options(self, **options: Any) -> GenerationOptions:
        """Validate generation options on top of the preset's defaults."""
        return GenerationOptions.from_kwargs(options, self.loaded.preset.defaults)

    def _image_options(self, **options: Any) -> GenerationOptions:
        """:meth:`options` for generation from an image: ``max_new_tokens`` must leave room in the
        context for the image's query tokens and a prompt (checked before any image is read)."""
        opts = self.options(**options)
        if self.loaded.prompt_budget(image=True, max_new_tokens=opts.max_new_tokens) < 1:
            most = self.loaded.prompt_budget(image=True, max_new_tokens=0) - 1
            raise OptionError(f"max_new_tokens ({opts.max_new_tokens}) leaves no room for a prompt: "
                              f"{room_for_prompt(self.loaded, True, opts.max_new_tokens)} (at most {most})")
        return opts

    def caption(self, images: Any, *, prompt: str | Sequence[str] | None = None, n: int = 1, **options: Any) -> Any:
        """Caption one image (-> Result) or a list (-> list[Result]); ``prompt`` is a prefix the caption starts with.

        With a prompt, decoder-only models (OPT) return the whole caption, prefix included; FlanT5
        reads the prompt as an instruction and returns what it generated.
        """
        self.loaded.require("caption")
        opts = self._image_options(n=n, **options)
        if not isinstance(images, (list, tuple)):
            return self._one(self._submit_one("caption", images, prompt or "", opts, strict=True))
        prompts = _spread(prompt or "", len(images), "prompt")
        return list(self._in_order(self._submit_images("caption", zip(images, prompts), opts), self._wait))

    def ask(self, images: Any, question: str | Sequence[str], **options: Any) -> Any:
        """Answer questions: one image and one question -> Result; lists -> list[Result].

        One image with several questions encodes the image once; several images with one question
        ask it of each; two lists are paired item by item.
        """
        self.loaded.require("ask")
        if not isinstance(question, (str, list, tuple)):
            raise OptionError(f"a question must be a string (or a list of them), got {type(question).__name__} "
                              f"{shown(question)}")
        _require_strings([question] if isinstance(question, str) else question, "a question")
        opts = self._image_options(**options)
        family = self.loaded.family
        assert family is not None
        if isinstance(question, str) and not isinstance(images, (list, tuple)):
            prompt = family.render_question(question)
            return self._one(self._submit_one("ask", images, prompt, opts, strict=True))
        if not isinstance(images, (list, tuple)):
            features = self.encode(images)
            return self._wait([self.submit_features("ask", features, family.render_question(q), opts,
                                                    image=describe(images)) for q in question])
        prompts = [family.render_question(q) for q in _spread(question, len(images), "question")]
        return list(self._in_order(self._submit_images("ask", zip(images, prompts), opts), self._wait))

    def iter_captions(self, images: Iterable[Any], *, prompt: str | None = None, n: int = 1,
                      **options: Any) -> Iterator[Result]:
        """Caption any number of images (any iterable, e.g. a generator of paths): one Result each, in order.

        Images are read chunk by chunk while the worker captions the chunks before, and at most three
        chunks are held at once, so memory stays flat however long the input. A bad image gives a
        Result with ``error`` set. Options are checked now, before the first image is read.
        """
        self.loaded.require("caption")
        opts = self._image_options(n=n, **options)
        images = _iterable(images, "iter_captions")
        return self._in_order(self._submit_images("caption", ((image, prompt or "") for image in images), opts), self._wait)

    def iter_answers(self, images: Iterable[Any], question: str, **options: Any) -> Iterator[Result]:
        """Ask one question of any number of images: :meth:`iter_captions`, answering instead."""
        self.loaded.require("ask")
        opts = self._image_options(**options)
        assert self.loaded.family is not None
        _require_strings([question], "a question")
        prompt = self.loaded.family.render_question(question)
        images = _iterable(images, "iter_answers")
        return self._in_order(self._submit_images("ask", ((image, prompt) for image in images), opts), self._wait)

    def chat(self, image: Any, *, system: str | None = None, **options: Any) -> Conversation:
        """Start a conversation about one image, encoded once, here; ``image=None`` chats without one."""
        self.loaded.require("chat")
        features = None if image is None else self.encode(image)
        return Conversation(self, features, system=system, options=self.options(**options),
                            image=None if image is None else describe(image))

    def submit_caption(self, image: Any, *, prompt: str | None = None, n: int = 1, **options: Any) -> Future[Result]:
        """Queue one caption; the future's result has ``error`` set if the item failed."""
        self.loaded.require("caption")
        return self._submit_one("caption", image, prompt or "", self._image_options(n=n, **options))

    def submit_ask(self, image: Any, question: str, **options: Any) -> Future[Result]:
        """Queue one question; the future's result has ``error`` set if the item failed."""
        self.loaded.require("ask")
        assert self.loaded.family is not None
        prompt = self.loaded.family.render_question(question)
        return self._submit_one("ask", image, prompt, self._image_options(**options))

    # -- building blocks ------------------------------------------------------------------------

    @overload
    def encode(self, image: list[Any] | tuple[Any, ...]) -> list[torch.Tensor]: ...

    @overload
    def encode(self, image: Any) -> torch.Tensor: ...

    def encode(self, image: Any) -> torch.Tensor | list[torch.Tensor]:
        """The language-model-projected query embeddings of one image, shape (num_query_tokens, hidden).

        A list of images gives a list of embeddings, encoded in batches; a bad image raises its ``ImageError``.
        """
        self.loaded.require("chat")
        self._check_open()
        if not isinstance(image, (list, tuple)):
            return self._enqueue(_Encode(self.preprocess([self._load(image)])[0])).result()
        futures = [self._enqueue(_Encode(row)) for row in self._pixel_rows(image)]
        return [future.result() for future in futures]

    def preprocess(self, images: list[Image.Image], *, itc: bool = False) -> torch.Tensor:
        """Pixel values of RGB images for the language model's vision encoder, or (``itc=True``) the
        retrieval model's: exactly the processor's, whichever backend transformers picked for it."""
        return torch.stack([self._pixels(image, itc=itc) for image in images])

    def _processor(self, itc: bool) -> Any:
        return self._retrieval("embed").processor if itc else self.loaded.processor

    def _input_size(self, itc: bool) -> tuple[int, int]:
        size = self._processor(itc).image_processor.size
        return size["width"], size["height"]

    def _load(self, image: Any, *, itc: bool = False) -> Image.Image:
        """Load an image input (with ``fast_preprocess``, a JPEG decodes at a reduced scale)."""
        return load_image(image, draft=self._input_size(itc) if self.fast_preprocess else None)

    def _pixels(self, image: Image.Image, *, itc: bool = False) -> torch.Tensor:
        """One image's pixel values, from the processor after :meth:`_shrink`."""
        shrunk = self._shrink(image, itc=itc)
        return self._processor(itc).image_processor(shrunk, return_tensors="pt")["pixel_values"][0]

    def _shrink(self, image: Image.Image, *, itc: bool = False) -> Image.Image:
        """Resize to the model's input size where Pillow gives the processor's own pixels: for a
        processor of transformers' Pillow backend, with its filter (twice as fast as the processor,
        which resizes through numpy). A processor of another backend (torchvision) resizes itself.
        ``fast_preprocess`` reduces by whole factors first (Pillow's ``reducing_gap``), inexactly."""
        wanted = self._input_size(itc)
        processor = self._processor(itc).image_processor
        if image.size == wanted or not (self.fast_preprocess or isinstance(processor, PilBackend)):
            return image
        resample = Image.Resampling(processor.resample if processor.resample is not None else Image.Resampling.BILINEAR)
        return image.resize(wanted, resample, reducing_gap=_REDUCING_GAP if self.fast_preprocess else None)

    def _pixel_rows(self, images: Sequence[Any], *, itc: bool = False) -> list[torch.Tensor]:
        """The pixel values of each image, prepared on the loader threads; a bad image raises its ``ImageError``."""
        prepared = list(self._loader.map(partial(self._prepared, itc=itc), images))
        _raise_first_error(prepared)
        return prepared

    # -- retrieval --------------------------------------------------------------------------------

    @overload
    def embed_images(self, images: list[Any] | tuple[Any, ...]) -> list[ImageEmbedding]: ...

    @overload
    def embed_images(self, images: Any) -> ImageEmbedding: ...

    def embed_images(self, images: Any) -> ImageEmbedding | list[ImageEmbedding]:
        """The retrieval model's ITC embeddings of one image (raises on a bad one) or of a list.

        Each :class:`ImageEmbedding` holds one unit vector per query token (``queries``, the ITC
        similarity with a text is the best of them) and their normalised mean (``pooled``). A list is
        loaded in parallel and embedded in batches, chunk by chunk; a bad image gets ``error`` set,
        the others are embedded.
        """
        head = self._retrieval("embed")
        if not isinstance(images, (list, tuple)):
            return self._embed_strictly([images], head)[0]
        return list(self.iter_embeddings(images))

    def iter_embeddings(self, images: Iterable[Any]) -> Iterator[ImageEmbedding]:
        """:meth:`embed_images` for any number of images (any iterable), in order: images are read
        chunk by chunk while the worker embeds the chunks before, and at most three chunks are held."""
        head = self._retrieval("embed")
        return self._in_order(self._submit_embeddings(_iterable(images, "iter_embeddings"), head), self._finish_embeddings)

    @overload
    def embed_texts(self, texts: str) -> torch.Tensor: ...

    @overload
    def embed_texts(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor: ...

    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """The retrieval model's ITC embeddings of texts: unit vectors, shape ``(D,)`` for one text, ``(N, D)`` for a list."""
        self._retrieval("embed")
        single = isinstance(texts, str)
        items = _text_list(texts)
        rows = [f.result() for f in [self._enqueue(_EmbedText(t)) for t in items]]
        if not rows:
            return torch.empty(0, self.embedding_dim)
        return rows[0] if single else torch.stack(rows)

    def similarity(self, images: Any, texts: str | Sequence[str]) -> torch.Tensor:
        """ITC similarity of every image with every text, shape ``(images, texts)`` (a single image or
        text counts as a list of one).

        Each score is the cosine of the text's embedding with the closest of the image's query
        embeddings, in [-1, 1]. It ranks texts for an image (or images for a text); it is **not** a
        probability, and its scale depends on the model: use :meth:`match` for "does this text
        describe this image?". A bad image raises its ``ImageError``.
        """
        head = self._retrieval("similarity")
        text_list = _text_list(texts)
        embeddings = self._embed_strictly(list(images) if isinstance(images, (list, tuple)) else [images], head)
        text_embeds = self.embed_texts(text_list)
        if not embeddings or not len(text_embeds):
            return torch.empty(len(embeddings), len(text_embeds))
        return retrieval.itc(torch.stack([e.queries for e in embeddings]), text_embeds)  # type: ignore[misc]

    def match(self, images: Any, texts: str | Sequence[str]) -> Any:
        """Image-text matching (ITM): the probability that a text describes an image, in [0, 1].

        One image and one text -> float. One image with a list of texts, a list of images with one
        text, or two lists paired item by item -> list of floats. The image is read once. A bad
        image raises its ``ImageError``.
        """
        self._retrieval("match")
        self._check_open()
        if isinstance(texts, str) and not isinstance(images, (list, tuple)):
            return self.match([images], [texts])[0]
        if not isinstance(images, (list, tuple)):
            text_list = _text_list(texts)
            rows = [self.preprocess([self._load(images, itc=True)], itc=True)[0]] * len(text_list)
        else:
            text_list = _checked_texts(_spread(texts, len(images), "text"))
            rows = self._pixel_rows(images, itc=True)
        return [f.result() for f in [self._enqueue(_Match(row, text)) for row, text in zip(rows, text_list)]]

    def _retrieval(self, task: str) -> models.RetrievalModel:
        self.loaded.require(task)
        assert self.loaded.retrieval is not None
        return self.loaded.retrieval

    def _submit_embeddings(self, images: Iterable[Any], head: models.RetrievalModel, *,
                           strict: bool = False) -> Iterator[_Embeddings]:
        """Load and resize the images chunk by chunk, in parallel, and queue the good ones for embedding
        (``strict``: raise the first bad image's error instead)."""
        self._check_open()
        for chunk, prepared, _ in self._prefetched(images, partial(self._prepared, itc=True)):
            if strict:
                _raise_first_error(prepared)
            queued: _Embeddings = []
            for image, outcome in zip(chunk, prepared):
                embedding = ImageEmbedding(None, None, head.name, head.version, source=_describe(image))
                if isinstance(outcome, torch.Tensor):
                    queued.append((embedding, self._enqueue(_Encode(outcome, itc=True))))
                else:
                    embedding.error = str(outcome)
                    queued.append((embedding, None))
            yield queued

    def _embed_strictly(self, images: list[Any], head: models.RetrievalModel) -> list[ImageEmbedding]:
        """The embeddings of ``images``: a bad image raises its own error, a failed embedding ``Blip2Error``."""
        embeddings = list(self._in_order(self._submit_embeddings(images, head, strict=True), self._finish_embeddings))
        for embedding in embeddings:  # the images loaded, but the worker failed
            if not embedding.ok:
                raise Blip2Error(embedding.error)
        return embeddings

    @staticmethod
    def _finish_embeddings(queued: _Embeddings) -> list[ImageEmbedding]:
        for embedding, future in queued:
            if future is None:
                continue
            try:
                queries = future.result()
            except Blip2Error as exc:
                embedding.error = str(exc)
                continue
            embedding.queries = queries
            embedding.pooled = torch.nn.functional.normalize(queries.mean(dim=0), dim=-1)
        return [embedding for embedding, _ in queued]

    def _prepared(self, image: Any, *, itc: bool = False) -> torch.Tensor | Blip2Error:
        """One image's pixel values for the language model's vision encoder (``itc``: the retrieval
        model's), or the error that says why not."""
        try:
            return self._pixels(self._load(image, itc=itc), itc=itc)
        except Blip2Error as exc:
            return exc

    def submit_features(self, task: str, features: torch.Tensor | None, prompt: str,
                        options: GenerationOptions, *, image: str | None = None) -> Future[Result]:
        """Queue a generation from already-encoded image features and a fully rendered prompt.

        With ``features=None`` the language model alone answers the prompt (no image tokens); such
        text-only requests are batched with each other. ``image`` names the features' source in the
        result (``Result.image``).
        """
        self.loaded.require("chat")
        try:
            self._check_prompt(prompt, options, image=features is not None)
        except OptionError as exc:
            return _failed(self._failure(task, prompt, str(exc), image))
        return self._enqueue(_Generate(task, prompt, options, features=features, text_only=features is None,
                                       image=image))

    def stream(self, task: str, features: torch.Tensor | None, prompt: str, options: GenerationOptions, *,
               image: str | None = None) -> TextStream:
        """Like :meth:`submit_features`, but the text comes as deltas while the worker generates it.

        The request runs as a batch of its own. Iterating the returned :class:`TextStream` yields the
        model's text deltas, which join to its ``result().raw_text``; :meth:`TextStream.processed`
        yields deltas that join to ``result().text``, after the ``process_result`` hooks.
        Beam search and ``n`` > 1 cannot stream: they raise :class:`OptionError`.
        """
        self.loaded.require("chat")
        if options.num_beams > 1 or options.n > 1:
            raise OptionError(f"streaming needs num_beams=1 and n=1, got num_beams={options.num_beams}, n={options.n}")
        self._check_prompt(prompt, options, image=features is not None)
        request = _Generate(task, prompt, options, features=features, text_only=features is None, image=image)
        request.stream = TextStream(request.future, self.loaded.processor.tokenizer,
                                    lambda raw: self._text(request, options.cut(raw)[0]), options.stop,
                                    hold=_hooks_process_results())
        self._enqueue(request)
        return request.stream

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Hold the batching window open while this caller prepares requests.

        While any caller is inside such a block, the worker waits (at most ``max_wait`` after the
        first queued request) before running a batch, so requests that several threads or tasks
        queue during the block run together.
        """
        with self._preparing_lock:
            self._preparing += 1
        try:
            yield
        finally:
            self._done_preparing()

    def use_adapter(self, adapter: str | None) -> str:
        """Serve ``adapter`` from now on (a folder, ``NAME[@VERSION]`` in the adapter store, or ``None``
        for the base model); returns the new model version.

        The swap runs on the worker between batches: requests queued before it finish on the old
        adapter, later ones use the new one, and results carry the model version that produced them.
        If the new adapter cannot be loaded, the old one keeps serving and the error is raised.
        Conversations keep the image features they encoded when they started.
        """
        self.loaded.require("caption")
        folder = None if adapter is None else _find_adapter(self.loaded, adapter)
        return self._enqueue(_Swap(folder)).result()

    def stats(self) -> dict[str, int]:
        """Counters since load: generation batches run, items generated, images encoded, largest batch."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop the worker after the queued work is done."""
        with self._closing_lock:
            stop, self._closed = not self._closed, True
            if stop:
                self._queue.put(_STOP)
        self._worker.join()
        self._loader.shutdown()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _submit_one(self, task: str, image: Any, prompt: str, opts: GenerationOptions, *,
                    strict: bool = False) -> Future[Result]:
        return next(self._submit_images(task, [(image, prompt)], opts, strict=strict))[0]

    def _submit_images(self, task: str, items: Iterable[tuple[Any, str]], opts: GenerationOptions,
                       *, strict: bool = False) -> Iterator[list[Future[Result]]]:
        """Load, resize and normalise ``(image, prompt)`` items chunk by chunk; yield each chunk's
        futures once it is queued (the next chunk is read only when the consumer asks for it)."""
        self._check_open()
        with self._preparing_lock:
            self._preparing += 1
        preparing = True
        try:
            for chunk, prepared, seconds in self._prefetched(items, lambda item: self._prepare(*item, opts)):
                if strict:
                    _raise_first_error(prepared)
                requests = {index: _Generate(task, chunk[index][1], opts, pixel_values=outcome,
                                             image=describe(chunk[index][0]), timings={"preprocess_s": seconds[index]})
                            for index, outcome in enumerate(prepared) if isinstance(outcome, torch.Tensor)}
                futures = [requests[index].future if index in requests
                           else _failed(self._failure(task, chunk[index][1], str(outcome), describe(chunk[index][0])))
                           for index, outcome in enumerate(prepared)]
                if preparing:  # before our first request: from now on the worker never waits for us
                    preparing = self._done_preparing()
                for request in requests.values():
                    self._enqueue(request)
                yield futures
        finally:
            if preparing:
                self._done_preparing()

    def _prefetched(self, items: Iterable[T], prepare: Callable[[T], R]) -> Iterator[tuple[list[T], list[R], list[float]]]:
        """``(chunk, prepared, seconds)`` for each chunk of ``max_batch_size`` items, prepared on the
        loader threads (even a single image: a burst of callers decodes at most ``loader_threads``
        images at once); ``seconds`` is how long each item took to prepare. The next chunk is already
        loading while the caller handles this one."""
        ahead: tuple[list[T], list[Future[list[tuple[R, float]]]]] | None = None
        for chunk in _chunks(items, self.max_batch_size):
            self._check_open()
            shares = min(self.loader_threads, len(chunk))  # one task per thread: fewer hand-offs than per item
            try:
                loading = chunk, [self._loader.submit(_prepare_each, prepare, chunk[i::shares]) for i in range(shares)]
            except RuntimeError:  # close() shut the loader down after our check
                raise Blip2Error("the host is closed") from None
            if ahead is not None:
                yield _unpacked(*ahead)
            ahead = loading
        if ahead is not None:
            yield _unpacked(*ahead)

    @staticmethod
    def _in_order(chunks: Iterator[list[T]], finish: Callable[[list[T]], list[R]]) -> Iterator[R]:
        """The finished items of queued chunks, in order. Chunk k is finished (waited for) only once
        chunk k+1 is queued, so the worker always has the next chunk; with the chunk loading after
        that (:meth:`_prefetched`), at most three chunks are held."""
        ahead: deque[list[T]] = deque()
        for chunk in chunks:
            ahead.append(chunk)
            if len(ahead) == 2:
                yield from finish(ahead.popleft())
        for chunk in ahead:
            yield from finish(chunk)

    def _done_preparing(self) -> bool:
        with self._preparing_lock:
            self._preparing -= 1
        return False

    def _prepare(self, image: Any, prompt: str, options: GenerationOptions) -> torch.Tensor | Blip2Error:
        """One image's pixel values, or the error that says why not (a bad prompt counts too)."""
        try:
            self._check_prompt(prompt, options)
        except Blip2Error as exc:
            return exc
        return self._prepared(image)

    def _check_prompt(self, prompt: Any, options: GenerationOptions, *, image: bool = True) -> None:
        """Refuse, before it joins a batch, a prompt that is not a string, holds the image token or
        does not fit the context (with the image's query tokens and, decoder-only, ``max_new_tokens``)."""
        require_text(prompt, "a prompt", empty=True)
        token = self.loaded.processor.image_token.content
        if token in prompt:
            raise OptionError(f"prompt {prompt[:60]!r} contains the image token {token!r}")
        length = self._prompt_lengths.get(prompt)
        if length is None:
            length = self.loaded.count_tokens(prompt)
            if len(self._prompt_lengths) > 4096:
                self._prompt_lengths.clear()
            self._prompt_lengths[prompt] = length
        if length > self.loaded.prompt_budget(image=image, max_new_tokens=options.max_new_tokens):
            raise OptionError(f"prompt {prompt[:60]!r} is too long ({length} tokens): "
                              f"{room_for_prompt(self.loaded, image, options.max_new_tokens)}")

    def _failure(self, task: str, prompt: str, error: str, image: str | None = None) -> Result:
        """The result of an item that failed."""
        return Result(task, None, None, self.name, self.model_version, prompt=prompt, error=error, image=image)

    def _enqueue(self, request: _Generate | _Encode | _EmbedText | _Match | _Swap) -> Future[Any]:
        with self._closing_lock:
            self._check_open()
            self._queue.put(request)
        return request.future

    def _check_open(self) -> None:
        if self._closed or not self._worker.is_alive():
            raise Blip2Error("the host is closed")

    def _one(self, future: Future[Result]) -> Result:
        result = future.result()
        if not result.ok:
            raise Blip2Error(result.error)
        return result

    @staticmethod
    def _wait(futures: list[Future[Result]]) -> list[Result]:
        return [f.result() for f in futures]

    def _serve(self) -> None:
        pending: list[Any] = []
        stopping = False
        limit = 1 if self.batch_invariant else self.max_batch_size
        while pending or not stopping:
            if not pending:
                item = self._queue.get()
                if item is _STOP:
                    return
                pending.append(item)
            deadline = time.perf_counter() + self.max_wait
            while not stopping and len(pending) < limit and not isinstance(pending[-1], _Swap):
                wait = deadline - time.perf_counter() if self._preparing else 0.0
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    if self._preparing and time.perf_counter() < deadline:
                        continue
                    break
                if item is _STOP:
                    stopping = True
                else:
                    pending.append(item)
            if isinstance(pending[0], _Swap):
                self._swap(pending.pop(0))
                continue
            barrier = next((i for i, p in enumerate(pending) if isinstance(p, _Swap)), len(pending))
            key = pending[0].key()
            batch = [p for p in pending[:barrier] if p.key() == key][:limit]
            pending = [p for p in pending if p not in batch]
            self._run(batch)

    def _swap(self, request: _Swap) -> None:
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
                if isinstance(batch[0], _Generate):
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
                if not isinstance(request, _Generate):
                    request.future.set_exception(Blip2Error(f"{type(request).__name__.strip('_').lower()} failed: {exc}"))
                else:
                    request.future.set_result(self._failure(request.task, request.prompt, f"generation failed: {exc}",
                                                            request.image))

    def _retrieval_batch(self, batch: list[Any]) -> list[Any]:
        """Run a batch of image encodings, text embeddings or matches; one output per request."""
        if isinstance(batch[0], _Encode) and not batch[0].itc:
            self._stats["encoded"] += len(batch)
            return list(self._features(torch.stack([r.pixel_values for r in batch])))
        head = self._retrieval("embed")
        net = head.model
        if isinstance(batch[0], _Encode):
            self._stats["encoded"] += len(batch)
            return list(retrieval.image_embeddings(net, torch.stack([r.pixel_values for r in batch])).float().cpu())
        ids, mask = retrieval.tokenize(partial(self.loaded.tokenize, tokenizer=head.processor.tokenizer),
                                       [r.text for r in batch], head.max_text_tokens)
        if isinstance(batch[0], _EmbedText):
            return list(retrieval.text_embeddings(net, ids, mask).float().cpu())
        vision = retrieval.vision_states(net, torch.stack([r.pixel_values for r in batch]))
        return retrieval.itm_logits(net, vision, ids, mask).float().softmax(dim=-1)[:, 1].tolist()

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        loaded = self.loaded
        pixel_values = pixel_values.to(loaded.device, loaded.dtype)
        return loaded.model.get_image_features(pixel_values=pixel_values).pooler_output

    def _generate(self, batch: list[_Generate]) -> None:
        loaded, model = self.loaded, self.loaded.model
        started = time.perf_counter()
        todo = [r for r in batch if r.features is None and not r.text_only]
        self._stats["batches"] += 1
        self._stats["items"] += len(batch)
        self._stats["encoded"] += len(todo)
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(batch))
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
                candidates.append((self._text(request, text), float(scores[j])))
                reasons.append(_finish_reason(stopped or ended[j], early[j], stream))
            if options.do_sample:
                order = sorted(range(n), key=lambda k: -candidates[k][1])
                candidates, reasons = [candidates[k] for k in order], [reasons[k] for k in order]
            timings = {**request.timings, "queue_s": started - request.queued, "encode_s": encoded - started,
                       "generate_s": done - encoded, "total_s": done - request.queued + request.timings.get("preprocess_s", 0.0)}
            try:
                result = _processed(request.task, [Result(request.task, text, score, self.name, self.model_version,
                                                          prompt=request.prompt, candidates=[(text, score)],
                                                          timings=dict(timings), finish_reason=reason, raw_text=text,
                                                          image=request.image)
                                                   for (text, score), reason in zip(candidates, reasons)])
            except PluginError as exc:  # that item fails; the batch and the worker go on
                result = self._failure(request.task, request.prompt, str(exc), request.image)
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

    def _text(self, request: _Generate, generated: str) -> str:
        if request.task == "caption" and request.prompt and self.loaded.family.decoder_only:
            return (request.prompt + generated).strip()
        return generated.strip()


def _processed(task: str, candidates: list[Result]) -> Result:
    """The best candidate after the ``process_result`` hooks, each candidate passed through them on
    its own; its ``candidates`` are the processed ones, best first."""
    done = [plugins.process_result(task, candidate) for candidate in candidates]
    return replace(done[0], candidates=[(result.text, result.score) for result in done])


def _hooks_process_results() -> bool:
    """Whether a ``process_result`` implementation is registered (a stream's text may then change at the end)."""
    return bool(plugins.get_plugin_manager().hook.process_result.get_hookimpls())


def _finish_reason(stopped: bool, early: bool, stream: TextStream | None) -> str:
    """Why a sequence ended: ``stopped`` at EOS or a stop string in its text, ``early`` before
    ``max_new_tokens`` (a stream closed, or a stop string that began in the prompt)."""
    if stopped:
        return "stop"
    if not early:
        return "length"
    return "cancelled" if stream is not None and stream.closed else "stop"


def _prepare_each(prepare: Callable[[T], R], items: list[T]) -> list[tuple[R, float]]:
    """What preparing each item gave, and how long it took."""
    done = []
    for item in items:
        started = time.perf_counter()
        done.append((prepare(item), time.perf_counter() - started))
    return done


def _unpacked(chunk: list[T], loading: list[Future[list[tuple[R, float]]]]) -> tuple[list[T], list[R], list[float]]:
    """A prefetched chunk once loaded (share ``i`` held items ``i, i + shares, ...``): its items,
    what preparing each gave, and how long each took."""
    shares = [future.result() for future in loading]
    done = [shares[i % len(shares)][i // len(shares)] for i in range(len(chunk))]
    return chunk, [outcome for outcome, _ in done], [seconds for _, seconds in done]


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _raise_first_error(prepared: list[Any]) -> None:
    """Raise the error of the first item that failed to load (calls that report a bad image as its
    own exception rather than as a failed result)."""
    for outcome in prepared:
        if isinstance(outcome, Blip2Error):
            raise outcome


def _find_adapter(loaded: models.LoadedModel, adapter: Any) -> str:
    """:func:`models.find_adapter`, with one line for what can be neither a folder nor a store
    reference (not a path, a name longer than the file system takes)."""
    if not isinstance(adapter, (str, bytes, os.PathLike)):
        raise ModelLoadError(f"an adapter is a folder or NAME[@VERSION] of the adapter store, got "
                             f"{type(adapter).__name__}")
    adapter = os.fsdecode(adapter)
    try:
        return models.find_adapter(loaded, adapter)
    except (OSError, ValueError, RuntimeError) as exc:  # no file system takes this name; "~nobody/x"
        try:
            parse_ref(adapter)
            reason = f"{exc.strerror if isinstance(exc, OSError) else exc}"
        except StoreError as bad:
            reason = str(bad)
        raise ModelLoadError(f"adapter {describe(adapter)}: no such folder, and not in the adapter store: {reason}") from None


def _spread(value: T | Sequence[T], count: int, what: str) -> list[T]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise OptionError(f"got {len(value)} {what}s for {count} images")
        return list(value)
    return [value] * count  # type: ignore[list-item]


def _checked_texts(texts: list[Any]) -> list[str]:
    """``texts``, unless one is not a non-empty string: then :class:`OptionError` naming it."""
    _require_strings(texts, "a text")
    return [require_text(text, "a text") for text in texts]


def _text_list(texts: Any) -> list[str]:
    """One text or several (a list, tuple or other iterable, not bytes or a mapping), as a checked list."""
    if isinstance(texts, str):
        return _checked_texts([texts])
    if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        raise OptionError(f"texts must be a string or a list of strings, got {type(texts).__name__} {shown(texts)}")
    return _checked_texts(list(texts))


def _require_strings(values: Sequence[Any], what: str) -> None:
    """Refuse the first value that is not a string, naming its type and (briefly) itself."""
    for value in values:
        if not isinstance(value, str):
            raise OptionError(f"{what} must be a string, got {type(value).__name__} {shown(value)}")


MAX_BATCH_SIZE = 4096
"""The most requests one batch may hold (``Host.load(max_batch_size=...)``)."""
MAX_LOADER_THREADS = 1024


def _check_settings(max_batch_size: Any, max_wait: Any, loader_threads: Any, batch_invariant: Any = False) -> None:
    """Refuse host settings of the wrong type or out of range with one :class:`OptionError` line."""
    for name, value, most in (("max_batch_size", max_batch_size, MAX_BATCH_SIZE),
                              ("loader_threads", loader_threads, MAX_LOADER_THREADS)):
        if name == "loader_threads" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise OptionError(f"{name} must be a whole number from 1 to {most}, got {shown(value)}")
    if not isinstance(max_wait, (int, float)) or isinstance(max_wait, bool) or not 0 <= max_wait <= 60:
        raise OptionError(f"max_wait must be a number of seconds from 0 to 60, got {shown(max_wait)}")
    if not isinstance(batch_invariant, bool):
        raise OptionError(f"batch_invariant must be True or False, got {shown(batch_invariant)}")


def _iterable(images: Any, method: str) -> Iterable[Any]:
    """``images`` when it is an iterable of images, not one image (a path) or a non-iterable."""
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Iterable):
        raise OptionError(f"{method} takes an iterable of images (e.g. a list), got {type(images).__name__}")
    return images


def _describe(image: Any) -> str:
    """The source of an image input: a path or URL exactly as given (an index reads it again), else a description."""
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    return describe(image)


def _failed(result: Result) -> Future[Result]:
    future: Future[Result] = Future()
    future.set_result(result)
    return future


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
