"""``ChatBlip2``: a LangChain chat model answering through a shared blip2plugins host."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

import torch
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr

from blip2plugins import jsonfile, models
from blip2plugins.errors import Blip2Error, OptionError
from blip2plugins.generation import GenerationOptions
from blip2plugins.host import Host
from blip2plugins.types import Result

from ._host import HostSettings, ImageRef, encode_image
from .messages import Dialogue, ImageChoice, read_messages

_OPTION_NAMES = {f.name for f in fields(GenerationOptions)}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Request:
    """One call, ready for the host: what to generate from and what the model will see."""

    host: Host
    task: str
    features: torch.Tensor | None
    prompt: str
    options: GenerationOptions
    image: ImageRef | None
    turns_dropped: int


class ChatBlip2(HostSettings, BaseChatModel):
    """BLIP-2 as a LangChain chat model: the conversation is the prompt, the latest image is what it sees.

    * **History**: system messages form a preamble; human/AI turns are rendered in the model
      family's template (OPT ``"Question: ... Answer: ..."``), oldest turns dropped first to fit the
      language model's context together with the image's query tokens and ``max_tokens``.
      ``max_tokens`` is capped by the room the context leaves after the image and the last question.
      ``response_metadata["prompt"]`` shows exactly what the model saw, ``["turns_dropped"]`` how many
      turns were left out (the first time an instance drops any, it logs a warning). A reply keeps
      the model's own text in ``response_metadata["raw_text"]``; an AI message that carries it is
      rendered with it, so what ``process_result`` plugins change never reaches later prompts.
    * **Images**: read from every content-block shape (``message.content_blocks``). BLIP-2 sees one
      image per prompt: the latest in the conversation (``image_choice="first"`` for the first).
      Each distinct image is encoded once and reused across turns. A conversation without an image
      is answered by the language model alone. A human message with an image and no text asks for
      a caption.
    * **Generation**: greedy unless ``temperature`` > 0 (then sampled); ``stop`` strings end the
      answer and are cut off; other ``GenerationOptions`` (``num_beams``, ``seed``...) go in
      ``model_kwargs`` or as call keywords. A reply has at least one token (``min_new_tokens=1``,
      which ``model_kwargs`` may change): an empty reply helps no chat. Streamed chunks join to the
      ``invoke`` answer: the model's text as generated, or, while a ``process_result`` plugin is
      registered, the processed text in one chunk at the end.

    Nothing is loaded by the constructor: the model is loaded on first use and shared by every
    instance (and tool) naming the same model, adapter, device, dtype and quantization. Instances
    are serializable (``langchain_core.load.dumpd`` / ``load`` with
    ``valid_namespaces=["blip2plugins_langchain"]``); ``host`` is left out, so a loaded copy names
    its model and loads it on first use. There are no secrets.
    ``timeout`` bounds the wait for an answer; ``max_retries`` and ``api_key`` are accepted and unused
    (the model is local).
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")

    temperature: float | None = None
    """Sampling temperature; ``None`` or 0 means greedy decoding."""
    max_tokens: int | None = None
    """Most new tokens per answer (default: the model preset's, else 30)."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop strings: the answer ends before the first one."""
    streaming: bool = False
    """Whether ``invoke`` streams from the model internally (for streaming callbacks)."""
    timeout: float | None = None
    """Seconds to wait for an answer before giving up."""
    image_choice: ImageChoice = "latest"
    """Which image of the conversation BLIP-2 sees: the ``"latest"`` or the ``"first"``."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More generation options for every call (``num_beams``, ``repetition_penalty``, ``seed``...)."""
    _warned_trim: bool = PrivateAttr(default=False)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["blip2plugins_langchain", "chat_models"]

    @property
    def _llm_type(self) -> str:
        return "blip2-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "adapter": self.adapter, "device": self.device, "dtype": self.dtype,
                "quantize": self.quantize, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "stop": self.stop, "image_choice": self.image_choice, **self.model_kwargs}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="blip2", ls_model_type="chat",
                                 ls_model_name=kwargs.get("model") or self.model_name)
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        profile = ModelProfile(text_inputs=True, image_inputs=True, image_url_inputs=True, pdf_inputs=False,
                               audio_inputs=False, video_inputs=False, image_tool_message=False, text_outputs=True,
                               tool_calling=False, structured_output=False, reasoning_output=False)
        context = _context_size(self.model_name)
        if context is not None:
            profile["max_input_tokens"] = context
        return profile

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """BLIP-2 cannot call tools: raises ``NotImplementedError`` saying what to do instead."""
        raise NotImplementedError(
            "ChatBlip2 cannot call tools: BLIP-2 answers about images, it does not choose tools. To give an "
            "agent eyes, bind BLIP-2's tools to a tool-calling chat model: Blip2Toolkit(...).get_tools()")

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """BLIP-2 cannot fill a schema: raises ``NotImplementedError`` saying so."""
        raise NotImplementedError(
            "ChatBlip2 cannot give structured output: BLIP-2 generates a short free text about the image. "
            "Parse its answer, or have a model with structured output read it")

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the model's own tokenizer (no special tokens)."""
        return self.get_host().token_ids(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Input tokens these messages cost: the rendered prompt plus the image's query tokens."""
        host = self.get_host()
        dialogue = read_messages(messages, self.image_choice)
        task, prompt, _, _ = self._render(host, dialogue, self._options(host, None, {}))
        return host.count_tokens(prompt, image=dialogue.image is not None)

    # -- generation ------------------------------------------------------------------------------

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._prepare(messages, stop, kwargs)
        future = request.host.submit_features(request.task, request.features, request.prompt, request.options)
        try:
            result = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise Blip2Error(f"no answer within timeout={self.timeout} s") from None
        return self._chat_result(request, result)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        future = request.host.submit_features(request.task, request.features, request.prompt, request.options)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except asyncio.TimeoutError:
            raise Blip2Error(f"no answer within timeout={self.timeout} s") from None
        return self._chat_result(request, result)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._prepare(messages, stop, kwargs)
        stream = request.host.stream(request.task, request.features, request.prompt, request.options)
        for delta in stream.processed():
            yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        yield self._last_chunk(request, stream.result())

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        request = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        stream = request.host.stream(request.task, request.features, request.prompt, request.options)
        deltas = stream.processed()
        try:
            while (delta := await asyncio.to_thread(next, deltas, None)) is not None:
                yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:
            stream.close()
        yield self._last_chunk(request, await asyncio.to_thread(stream.result))

    def batch(self, inputs: list[LanguageModelInput], config: RunnableConfig | list[RunnableConfig] | None = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[BaseMessage]:
        """Answer several conversations; their requests reach the host together and run as one batch."""
        try:
            host = self.get_host(kwargs.get("model")) if len(inputs) > 1 else None
        except Blip2Error:  # e.g. an unknown model: each item reports it (or raises, as the caller chose)
            host = None
        if host is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        with host.preparing():
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[LanguageModelInput],
                     config: RunnableConfig | list[RunnableConfig] | None = None,
                     *, return_exceptions: bool = False, **kwargs: Any) -> list[BaseMessage]:
        """Async :meth:`batch`."""
        try:
            host = await asyncio.to_thread(self.get_host, kwargs.get("model")) if len(inputs) > 1 else None
        except Blip2Error:
            host = None
        if host is None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        with host.preparing():
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    # -- internals -------------------------------------------------------------------------------

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        """Read the messages, encode (or reuse) the image and render the prompt. Blocks; not on an event loop."""
        host = self.get_host(kwargs.get("model"))
        dialogue = read_messages(messages, self.image_choice)
        options = self._options(host, stop, kwargs)
        task, prompt, options, dropped = self._render(host, dialogue, options)
        if dropped and not self._warned_trim:
            self._warned_trim = True
            log.warning("ChatBlip2 left the %d oldest turn(s) out of the prompt to fit the model's %d-token context "
                        "(response_metadata['turns_dropped'] counts them on every reply; warned once per instance)",
                        dropped, host.context_size)
        features = None if dialogue.image is None else encode_image(host, dialogue.image)
        return _Request(host, task, features, prompt, options, dialogue.image, dropped)

    def _options(self, host: Host, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerationOptions:
        options = {"min_new_tokens": 1, **self.model_kwargs, **{k: v for k, v in kwargs.items() if k in _OPTION_NAMES}}
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            options["max_new_tokens"] = max_tokens
        temperature = kwargs.get("temperature", self.temperature)
        if temperature:
            options.update(do_sample=True, temperature=temperature)
        stops = stop if stop is not None else self.stop
        if stops:
            options["stop"] = list(stops)
        return host.options(**options)

    @staticmethod
    def _render(host: Host, dialogue: Dialogue, options: GenerationOptions) -> tuple[str, str, GenerationOptions, int]:
        """The task, the prompt, the options (``max_new_tokens`` capped to the room left in the context)
        and how many of the oldest turns the prompt left out."""
        image = dialogue.image is not None
        if image and not dialogue.question:
            task, alone = "caption", ""
        else:
            task = "chat"
            alone = host.render_chat([], dialogue.question, system=dialogue.system, max_new_tokens=0, image=image)[0]
        room = host.context_size - host.count_tokens(alone, image=image)
        if room < 1:
            raise OptionError(f"the last message is too long for the model's {host.context_size}-token context")
        if options.max_new_tokens > room:
            options = options.updated(max_new_tokens=room, min_new_tokens=min(options.min_new_tokens, room))
        if task == "caption":
            return task, "", options, 0
        prompt, dropped = host.render_chat(dialogue.turns, dialogue.question, system=dialogue.system,
                                           max_new_tokens=options.max_new_tokens, image=image)
        return task, prompt, options, dropped

    def _chat_result(self, request: _Request, result: Result) -> ChatResult:
        if not result.ok:
            raise Blip2Error(result.error)
        message = AIMessage(content=result.text or "", usage_metadata=_usage(request, result),
                            response_metadata=_metadata(request, result))
        return ChatResult(generations=[ChatGeneration(message=message)])

    @staticmethod
    def _last_chunk(request: _Request, result: Result) -> ChatGenerationChunk:
        """The closing chunk: no text, but the usage and metadata (once, so merging does not repeat them)."""
        message = AIMessageChunk(content="", usage_metadata=_usage(request, result),
                                 response_metadata=_metadata(request, result), chunk_position="last")
        return ChatGenerationChunk(message=message)


def _usage(request: _Request, result: Result) -> UsageMetadata:
    inputs = request.host.count_tokens(request.prompt, image=request.features is not None)
    outputs = request.host.count_tokens(result.text or "", special=False)
    return UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)


def _metadata(request: _Request, result: Result) -> dict[str, Any]:
    return {"model_name": result.model, "model_version": result.model_version, "finish_reason": result.finish_reason,
            "prompt": request.prompt, "image": request.image.key if request.image else None, "score": result.score,
            "raw_text": result.raw_text, "turns_dropped": request.turns_dropped}


@functools.lru_cache(maxsize=64)
def _context_size(model: str) -> int | None:
    """The language model's context length, read from a local checkpoint's config (no weights loaded)."""
    try:
        config = jsonfile.load_file(Path(models.resolve(model).source) / "config.json", max_bytes=1 << 20)
    except (OSError, ValueError, Blip2Error):
        return None
    text = config.get("text_config") if isinstance(config, dict) else None
    value = (text.get("max_position_embeddings") or text.get("n_positions")) if isinstance(text, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
