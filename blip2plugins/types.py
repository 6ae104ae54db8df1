"""Plain data types shared by the host, the hooks and the integrations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Mapping, Union

if TYPE_CHECKING:
    import click
    import torch
    from PIL import Image

#: What a plugin's image loader may hand back; the core decodes and checks it like any other input.
LoadedImage = Union[bytes, "IO[bytes]", "Image.Image"]


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied to every image input, whatever its source. The timeouts are in seconds:
    ``read_timeout`` between two reads, ``download_timeout`` for a whole download."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 64_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    download_timeout: float = 60.0


@dataclass(frozen=True)
class ImageSource:
    """A way to fetch images named by a string: a URL scheme (``"s3"`` matches ``s3://...``) or a predicate.

    ``load(ref, limits)`` returns bytes, a binary file object or a PIL image, or raises
    :class:`~blip2plugins.errors.ImageError`. The core then decodes and checks the result.
    """

    name: str
    load: Callable[[str, ImageLimits], LoadedImage]
    scheme: str | None = None
    matches: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        if (self.scheme is None) == (self.matches is None):
            raise ValueError(f"image source {self.name!r}: give exactly one of scheme= or matches=")

    def claims(self, ref: str) -> bool:
        """Whether this source handles the string ``ref``."""
        if self.scheme is not None:
            return ref.lower().startswith(self.scheme.lower() + ":")
        assert self.matches is not None
        return bool(self.matches(ref))


#: What a captioning checkpoint (``Blip2ForConditionalGeneration``) does.
GENERATION_TASKS: tuple[str, ...] = ("caption", "ask", "chat")
#: What a retrieval checkpoint (``Blip2ForImageTextRetrieval``) does.
RETRIEVAL_TASKS: tuple[str, ...] = ("match", "similarity", "embed")


@dataclass(frozen=True)
class ModelPreset:
    """A named model: where its checkpoint lives and how to use it.

    ``source`` is a hub id (``"Salesforce/blip2-opt-2.7b"``) or a local folder. ``kind`` is
    ``"generation"`` (a captioning checkpoint with a language model) or ``"retrieval"`` (ITM / ITC
    heads only, like ``Salesforce/blip2-itm-vit-g``); a folder or hub id without a preset is told
    apart by its config. ``retrieval`` names a retrieval checkpoint (preset, folder or hub id)
    loaded beside a generation model, so one host also matches, scores and embeds. ``family`` is the
    language-model family (``"opt"`` or ``"t5"``); ``None`` means: read it from the checkpoint's
    config. ``defaults`` are generation options applied before the caller's own.
    """

    name: str
    source: str
    family: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "generation"
    retrieval: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("generation", "retrieval"):
            raise ValueError(f"model preset {self.name!r}: kind must be 'generation' or 'retrieval', got {self.kind!r}")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks a host loaded from this preset offers (declared, without loading anything)."""
        if self.kind == "retrieval":
            return RETRIEVAL_TASKS
        return GENERATION_TASKS + (RETRIEVAL_TASKS if self.retrieval else ())


@dataclass(frozen=True)
class ServeCommand:
    """A way to serve the host to other programs (Label Studio, an HTTP API...).

    ``command`` is a click command; ``blip2 serve <name>`` runs it.
    """

    name: str
    command: "click.Command"
    description: str = ""


@dataclass(frozen=True)
class AdapterVersion:
    """One trained adapter version in an adapter store (:mod:`blip2plugins.store`).

    ``name`` is the adapter's name (several lines of adapters can share a base model), ``version``
    its version id (``"v0003"``), ``path`` the version's folder, ``method`` how it was trained
    (``"lora"``, ``"qformer"``, ``"full"``), ``base_model`` the model it applies to. ``metrics`` are its
    held-out metrics, ``dataset`` the fingerprint of the data it was trained on, ``parent`` the
    version it was trained from (if any), ``created`` an ISO 8601 UTC time, and ``status`` one of
    ``"candidate"`` (stored, not judged), ``"promoted"`` (passed the gate, or promoted by hand) or
    ``"refused"`` (failed the gate); ``reason`` says why.
    """

    name: str
    version: str
    path: str
    method: str
    base_model: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    dataset: str = ""
    parent: str | None = None
    created: str = ""
    status: str = "candidate"
    reason: str = ""


@dataclass
class Result:
    """The outcome of one task on one item.

    ``text`` is the best output and ``score`` its confidence: the geometric mean of the model's
    probabilities of the generated tokens (``exp`` of the mean token log-probability, end-of-text
    included), in (0, 1]. ``candidates`` holds every returned sequence with its score (``n`` > 1).
    ``finish_reason`` is ``"stop"`` when the model ended the text (end of text or a stop string),
    ``"length"`` when it ran out of new tokens and ``"cancelled"`` when a stream was closed early.
    When the item failed, ``text`` and ``score`` are ``None`` and ``error`` says why. ``raw_text`` is
    the model's own best text, before any ``process_result`` hook (chats remember it, streams hand it
    out); ``image`` describes the source image, ``None`` when there is none or the call was given
    only encoded features.
    """

    task: str
    text: str | None
    score: float | None
    model: str
    model_version: str
    prompt: str | None = None
    candidates: list[tuple[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    finish_reason: str | None = None
    raw_text: str | None = None
    image: str | None = None

    @property
    def ok(self) -> bool:
        """True when the item succeeded."""
        return self.error is None


@dataclass
class ImageEmbedding:
    """The ITC embeddings of one image from a retrieval model.

    ``queries`` holds one unit-length vector per query token, shape ``(Q, D)``: the ITC similarity
    of the image with a text is the maximum over these of the cosine with the text's embedding.
    ``pooled`` is their mean, re-normalised, shape ``(D,)``: one vector for image-to-image search.
    ``model`` / ``model_version`` name the retrieval model. When the image failed, both tensors are
    ``None`` and ``error`` says why.
    """

    queries: "torch.Tensor | None"
    pooled: "torch.Tensor | None"
    model: str
    model_version: str
    source: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was embedded."""
        return self.error is None
