"""BLIP-2 as tools for agents: a tool-calling LLM asks BLIP-2 about images, and finds them.

``caption_image(image)``, ``ask_image(image, question)`` and ``match_image_text(image, texts)`` take
the image as a string: a local path, an ``http(s)`` URL or a ``data:`` URI (an LLM cannot reliably
copy base64 into arguments). ``search_images(query, k)`` searches an image index file (see
:mod:`blip2plugins.index`) and names the images it finds, so the agent can pass them on. Each tool
returns ``(text, artifact)`` (``response_format="content_and_artifact"``): the LLM reads the text,
the ``ToolMessage.artifact`` keeps scores and the model version. The ``*_latest_image`` variants
(:mod:`.agent_tools`) take no image argument: they read the latest image attached earlier in the
agent's conversation. Bad input comes back as a tool error the agent can read.

:class:`~.toolkit.Blip2Toolkit` builds the set (:data:`.toolkit.TOOLS`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from blip2plugins.errors import Blip2Error, ImageError
from blip2plugins.host import Host
from blip2plugins.images import load_image
from blip2plugins.types import Result

from ._host import HostSettings, ImageRef, encode_image

if TYPE_CHECKING:
    from blip2plugins.index import ImageIndex

IMAGE_HELP = "The image: a local file path, an http(s) URL or a data: URI."


class ImageInput(BaseModel):
    image: str = Field(description=IMAGE_HELP)


class ImageQuestionInput(BaseModel):
    image: str = Field(description=IMAGE_HELP)
    question: str = Field(description="A short question about the image, e.g. 'how many people are there?'")


class ImageTextsInput(BaseModel):
    image: str = Field(description=IMAGE_HELP)
    texts: list[str] = Field(description="Short candidate descriptions to score against the image, e.g. "
                                         "['a dog on a beach', 'a cat on a sofa'].")


class SearchInput(BaseModel):
    query: str = Field(description="What the images should show, in a few words, e.g. 'a red car in the snow'.")
    k: int = Field(default=5, description="How many images to return, best first (at least 1).")


class Blip2Tool(HostSettings, BaseTool):
    """Base of the BLIP-2 tools: a shared host, content-and-artifact output, errors as tool errors."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")

    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], str] | None = True
    handle_validation_error: Any = True

    def answer(self, image: ImageRef, task: str, prompt: str) -> tuple[str, dict[str, Any]]:
        """Run one request on ``image`` (encoded once per host) and shape it for the agent."""
        try:
            host = self.get_host()
            host.require(task)
            result = host.submit_features(task, encode_image(host, image), prompt, host.options()).result()
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        if not result.ok:
            raise ToolException(result.error)
        return result.text or "", artifact(result)


def artifact(result: Result) -> dict[str, Any]:
    """What the tool keeps for programs (not shown to the LLM): score, model version, timings."""
    return {"score": result.score, "model": result.model, "model_version": result.model_version,
            "finish_reason": result.finish_reason, "timings": dict(result.timings)}


def question_prompt(host: Host, question: str) -> str:
    if not question.strip():
        raise ToolException("the question is empty: ask something about the image")
    return host.render_question(question)


class CaptionImageTool(Blip2Tool):
    """Caption an image with BLIP-2."""

    name: str = "caption_image"
    description: str = ("Describe an image in one short sentence (BLIP-2 captioning). "
                        "Input: the image as a local path, an http(s) URL or a data: URI.")
    args_schema: type[BaseModel] = ImageInput

    def _run(self, image: str, run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        try:
            ref = ImageRef.from_string(image)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return self.answer(ref, "caption", "")


class AskImageTool(Blip2Tool):
    """Answer a question about an image with BLIP-2."""

    name: str = "ask_image"
    description: str = ("Answer a short question about an image (BLIP-2 visual question answering): colours, "
                        "counts, objects, yes/no. Inputs: the image (local path, http(s) URL or data: URI) and "
                        "the question.")
    args_schema: type[BaseModel] = ImageQuestionInput

    def _run(self, image: str, question: str,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        try:
            ref = ImageRef.from_string(image)
            prompt = question_prompt(self.get_host(), question)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return self.answer(ref, "ask", prompt)


class MatchImageTextTool(Blip2Tool):
    """Score how well texts describe an image with BLIP-2's retrieval model (ITM probability, ITC score)."""

    name: str = "match_image_text"
    description: str = ("Score how well each of a few short texts describes an image: for each text, the probability "
                        "(from BLIP-2's image-text matching head, ITM) that it describes the image, and which text "
                        "matches best. Inputs: the image (local path, http(s) URL or data: URI) and the texts.")
    args_schema: type[BaseModel] = ImageTextsInput

    def _run(self, image: str, texts: list[str],
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        try:
            ref = ImageRef.from_string(image)
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        return self.match(ref, texts)

    def match(self, image: ImageRef, texts: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """ITM probability and ITC score of every text with ``image`` (read once), shaped for the agent."""
        texts = list(texts)
        if not texts:
            raise ToolException("there are no texts to match: give one or more short descriptions of the image")
        try:
            host = self.get_host()
            host.require("match")
            try:
                picture = load_image(image.source)
            except ImageError as exc:
                raise ImageError(image.label, exc.reason) from None
            probabilities = [float(p) for p in host.match(picture, texts)]
            scores = [float(s) for s in host.similarity(picture, texts)[0]]
            model, version = host.retrieval_name, host.retrieval_version
        except Blip2Error as exc:
            raise ToolException(str(exc)) from None
        best = max(range(len(texts)), key=probabilities.__getitem__)
        lines = [f"{i}. {text!r}: {p:.1%}" for i, (text, p) in enumerate(zip(texts, probabilities), 1)]
        content = "\n".join(["Probability that each text describes the image (image-text matching):", *lines,
                              f"Best match: {texts[best]!r} ({probabilities[best]:.1%})."])
        return content, {"texts": texts, "itm": probabilities, "itc": scores, "best": texts[best],
                         "model": model, "model_version": version}


class SearchImagesTool(Blip2Tool):
    """Find images by text in an image index file (:mod:`blip2plugins.index`) with BLIP-2's retrieval model.

    The index is loaded on first use and shared by every tool naming the same file; it is loaded again
    when the file changes on disk, so an index that a backend rebuilds or extends is picked up.
    ``rerank=True`` re-scores the hits with the ITM head and orders them by that probability.
    """

    name: str = "search_images"
    description: str = ("Find images that match a short description in the indexed image collection (BLIP-2 "
                        "image-text retrieval). Returns references (paths or URLs) to the best images, best first, "
                        "with their scores: pass a reference to caption_image or ask_image to look at that image.")
    args_schema: type[BaseModel] = SearchInput
    index: Path
    """The image index file (``blip2 index build IMAGES --out FILE``)."""
    rerank: bool = False
    """Re-score the ``k`` hits with the ITM head (slower: reads the images again) and order them by it."""

    def _run(self, query: str, k: int = 5,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, dict[str, Any]]:
        if not query.strip():
            raise ToolException("the query is empty: say what the images should show")
        try:
            from blip2plugins.index import search

            host = self.get_host()
            hits = search(host, _index_file(self.index).get(), query, k=k, rerank=self.rerank)
            model, version = host.retrieval_name, host.retrieval_version
        except (Blip2Error, ImportError) as exc:
            raise ToolException(str(exc)) from None
        lines = [f"{hit.rank}. {hit.source} ("
                 + (f"match {hit.itm:.1%}, " if hit.itm is not None else "") + f"similarity {hit.score:.3f})"
                 for hit in hits]
        content = "\n".join([f"Images for {query!r}, best first (pass one to caption_image or ask_image to look "
                              "at it):", *lines])
        return content, {"query": query, "hits": [dataclasses.asdict(hit) for hit in hits], "index": str(self.index),
                         "rerank": self.rerank, "model": model, "model_version": version}


class _IndexFile:
    """An index file, loaded on first use and again whenever it changes on disk (mtime, size or inode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.stamp: tuple[int, int, int] | None = None
        self.index: ImageIndex | None = None

    def get(self) -> ImageIndex:
        """The index as the file holds it now; a missing or bad file raises :class:`IndexFileError`."""
        from blip2plugins.index import ImageIndex

        try:
            stat = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None  # ImageIndex.load says what is wrong
        with self.lock:
            if self.index is None or stamp is None or stamp != self.stamp:
                self.index = ImageIndex.load(self.path)
                self.stamp = stamp
            return self.index


_index_files: dict[str, _IndexFile] = {}
_index_files_lock = threading.Lock()


def _index_file(path: str | os.PathLike[str]) -> _IndexFile:
    """The process-wide loader of the index file at ``path``."""
    key = os.path.abspath(path)
    with _index_files_lock:
        return _index_files.setdefault(key, _IndexFile(key))
