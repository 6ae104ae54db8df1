"""The model host: one loaded BLIP-2 serving captions, answers and chats to many callers.

One worker thread owns the model. Callers (any number of threads) load and preprocess their images
(lists in parallel, on a small thread pool), then queue requests; the worker gathers up to
``max_batch_size`` compatible requests and runs them as one batch. It waits for more (at most
``max_wait`` seconds) only while callers that have queued nothing yet are loading their images, so a
lone caller never waits and a long list streams through in full batches. Every caller, adapter and
plugin gets batching for free, and in float32 results equal those of one-by-one runs (same tokens).

Generation follows ``Blip2ForConditionalGeneration.generate`` step by step, but on image features
that can be computed once and reused: a chat encodes its image once for all turns. A request without
an image is answered by the language model alone (no image tokens). :meth:`Host.stream` hands out the
text of one request while it is generated.

Here: the facade callers use, and image preparation. The worker thread and what runs on it
(batching, generation, scores) are in :mod:`.worker`; streaming is in :mod:`.streaming`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterable, Iterator, Mapping, Sequence, TypeVar, overload

import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend

from . import models, plugins, retrieval
from .chat import Conversation
from .errors import Blip2Error, ModelLoadError, OptionError, StoreError
from .generation import GenerationOptions
from .images import describe, load_image
from .loader import Loader, in_order, raise_first_error, usable_cpus
from .prompts import check_prompt, fit_chat, room_for_prompt
from .store import parse_ref
from .streaming import TextStream
from .texts import require_text, shown
from .types import ImageEmbedding, Result
from .worker import STOP, EmbedText, Encode, Generate, Match, Swap, Worker

log = logging.getLogger(__name__)
T = TypeVar("T")
#: ``fast_preprocess``: box-reduce to within 3x of the target before the bicubic pass (measured on a
#: 640x480 image to 48 px: 0.56 vs 1.65 ms, mean difference 0.11 grey levels, at most 4).
_REDUCING_GAP = 3.0
#: Default cap on loader threads: each holds one full-size decoded image (a 24 MP photo is ~100 MB).
_MAX_LOADERS = 16


#: A chunk of image embeddings being computed: each with its worker future, or None when the image failed.
_Embeddings = list[tuple[ImageEmbedding, "Future[torch.Tensor] | None"]]
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
        self.loader_threads = loader_threads or min(_MAX_LOADERS, usable_cpus())
        self._loader = Loader(self.loader_threads)
        self._preparing = 0  # callers loading images that have queued nothing yet: the worker waits for them
        self._preparing_lock = threading.Lock()
        self._closed = False
        self._closing_lock = threading.Lock()  # nothing is queued behind the worker's stop signal
        self._prompt_lengths: dict[str, int] = {}
        self._worker = Worker(loaded, max_batch_size=max_batch_size, max_wait=max_wait, batch_invariant=batch_invariant,
                              process_result=plugins.process_result, preparing=lambda: self._preparing)
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
        return list(in_order(self._submit_images("caption", zip(images, prompts), opts), self._wait))

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
        return list(in_order(self._submit_images("ask", zip(images, prompts), opts), self._wait))

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
        return in_order(self._submit_images("caption", ((image, prompt or "") for image in images), opts), self._wait)

    def iter_answers(self, images: Iterable[Any], question: str, **options: Any) -> Iterator[Result]:
        """Ask one question of any number of images: :meth:`iter_captions`, answering instead."""
        self.loaded.require("ask")
        opts = self._image_options(**options)
        assert self.loaded.family is not None
        _require_strings([question], "a question")
        prompt = self.loaded.family.render_question(question)
        images = _iterable(images, "iter_answers")
        return in_order(self._submit_images("ask", ((image, prompt) for image in images), opts), self._wait)

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
            return self._enqueue(Encode(self.preprocess([self._load(image)])[0])).result()
        futures = [self._enqueue(Encode(row)) for row in self._pixel_rows(image)]
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
        raise_first_error(prepared)
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
        return in_order(self._submit_embeddings(_iterable(images, "iter_embeddings"), head), self._finish_embeddings)

    @overload
    def embed_texts(self, texts: str) -> torch.Tensor: ...

    @overload
    def embed_texts(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor: ...

    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """The retrieval model's ITC embeddings of texts: unit vectors, shape ``(D,)`` for one text, ``(N, D)`` for a list."""
        self._retrieval("embed")
        single = isinstance(texts, str)
        items = _text_list(texts)
        rows = [f.result() for f in [self._enqueue(EmbedText(t)) for t in items]]
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
        return [f.result() for f in [self._enqueue(Match(row, text)) for row, text in zip(rows, text_list)]]

    def _retrieval(self, task: str) -> models.RetrievalModel:
        self.loaded.require(task)
        assert self.loaded.retrieval is not None
        return self.loaded.retrieval

    def _submit_embeddings(self, images: Iterable[Any], head: models.RetrievalModel, *,
                           strict: bool = False) -> Iterator[_Embeddings]:
        """Load and resize the images chunk by chunk, in parallel, and queue the good ones for embedding
        (``strict``: raise the first bad image's error instead)."""
        self._check_open()
        prepare = partial(self._prepared, itc=True)
        for chunk, prepared, _ in self._loader.prefetched(images, prepare, self.max_batch_size, self._check_open):
            if strict:
                raise_first_error(prepared)
            queued: _Embeddings = []
            for image, outcome in zip(chunk, prepared):
                embedding = ImageEmbedding(None, None, head.name, head.version, source=_describe(image))
                if isinstance(outcome, torch.Tensor):
                    queued.append((embedding, self._enqueue(Encode(outcome, itc=True))))
                else:
                    embedding.error = str(outcome)
                    queued.append((embedding, None))
            yield queued

    def _embed_strictly(self, images: list[Any], head: models.RetrievalModel) -> list[ImageEmbedding]:
        """The embeddings of ``images``: a bad image raises its own error, a failed embedding ``Blip2Error``."""
        embeddings = list(in_order(self._submit_embeddings(images, head, strict=True), self._finish_embeddings))
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
            return _failed(self._worker.failure(task, prompt, str(exc), image))
        return self._enqueue(Generate(task, prompt, options, features=features, text_only=features is None,
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
        request = Generate(task, prompt, options, features=features, text_only=features is None, image=image)
        request.stream = TextStream(request.future, self.loaded.processor.tokenizer,
                                    lambda raw: self._worker.text(request, options.cut(raw)[0]), options.stop,
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
        return self._enqueue(Swap(folder)).result()

    def stats(self) -> dict[str, int]:
        """Counters since load: generation batches run, items generated, images encoded, largest batch."""
        return dict(self._worker.stats)

    def close(self) -> None:
        """Stop the worker after the queued work is done."""
        with self._closing_lock:
            stop, self._closed = not self._closed, True
            if stop:
                self._worker.queue.put(STOP)
        self._worker.thread.join()
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
            loading = self._loader.prefetched(items, lambda item: self._prepare(*item, opts), self.max_batch_size,
                                              self._check_open)
            for chunk, prepared, seconds in loading:
                if strict:
                    raise_first_error(prepared)
                requests = {index: Generate(task, chunk[index][1], opts, pixel_values=outcome,
                                             image=describe(chunk[index][0]), timings={"preprocess_s": seconds[index]})
                            for index, outcome in enumerate(prepared) if isinstance(outcome, torch.Tensor)}
                futures = [requests[index].future if index in requests
                           else _failed(self._worker.failure(task, chunk[index][1], str(outcome), describe(chunk[index][0])))
                           for index, outcome in enumerate(prepared)]
                if preparing:  # before our first request: from now on the worker never waits for us
                    preparing = self._done_preparing()
                for request in requests.values():
                    self._enqueue(request)
                yield futures
        finally:
            if preparing:
                self._done_preparing()

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
        check_prompt(self.loaded, prompt, options.max_new_tokens, image=image, lengths=self._prompt_lengths)

    def _enqueue(self, request: Generate | Encode | EmbedText | Match | Swap) -> Future[Any]:
        with self._closing_lock:
            self._check_open()
            self._worker.queue.put(request)
        return request.future

    def _check_open(self) -> None:
        if self._closed or not self._worker.thread.is_alive():
            raise Blip2Error("the host is closed")

    def _one(self, future: Future[Result]) -> Result:
        result = future.result()
        if not result.ok:
            raise Blip2Error(result.error)
        return result

    @staticmethod
    def _wait(futures: list[Future[Result]]) -> list[Result]:
        return [f.result() for f in futures]


def _hooks_process_results() -> bool:
    """Whether a ``process_result`` implementation is registered (a stream's text may then change at the end)."""
    return bool(plugins.get_plugin_manager().hook.process_result.get_hookimpls())


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
