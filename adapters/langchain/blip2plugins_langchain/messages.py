"""LangChain messages -> what BLIP-2 sees: a system preamble, question/answer turns, a question and one image.

Every message is read through ``message.content_blocks``, so every content shape LangChain knows
(plain strings, v1 blocks, OpenAI ``image_url`` blocks, the older ``source_type`` form) arrives as
standard ``text`` and ``image`` blocks. System messages form the preamble; human (and tool) messages
are questions, AI messages answers (an AI message without text, e.g. only tool calls, is left out);
consecutive messages of one side are joined with a space. An AI message whose
``response_metadata["raw_text"]`` is a string (a ``ChatBlip2`` reply) is read as that text: the
model's own answer, before ``process_result`` plugins changed its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from blip2plugins.errors import OptionError

from ._host import ImageRef

ImageChoice = Literal["latest", "first"]
#: Blocks that carry no content for BLIP-2 and are skipped (an AI message's tool calls, reasoning...).
_SKIPPED = {"tool_call", "tool_call_chunk", "invalid_tool_call", "reasoning", "server_tool_call",
            "server_tool_call_chunk", "server_tool_result", "non_standard"}


@dataclass(frozen=True)
class Dialogue:
    """A conversation as BLIP-2 sees it. ``image`` is the one image it conditions on, or ``None``."""

    system: str | None
    turns: list[tuple[str, str]]
    question: str
    image: ImageRef | None


def read_messages(messages: Sequence[BaseMessage], image_choice: ImageChoice = "latest") -> Dialogue:
    """Turn LangChain messages into a :class:`Dialogue`; the last message must come from the user side.

    BLIP-2 conditions on one image per prompt: the latest image in the conversation (any message),
    or the first with ``image_choice="first"``. Unsupported blocks (audio, video, files) are errors.
    """
    if not messages:
        raise OptionError("no messages: give at least one message to answer")
    system: list[str] = []
    sides: list[tuple[str, list[str]]] = []  # ("human" | "ai", texts), consecutive messages merged
    images: list[ImageRef] = []
    for m, message in enumerate(messages, 1):
        texts = []
        for b, block in enumerate(message.content_blocks, 1):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "image":
                images.append(ImageRef.from_block(dict(block), f"message {m}, content block {b}"))
            elif kind not in _SKIPPED:
                raise OptionError(f"message {m}, content block {b}: BLIP-2 reads text and images, not {kind!r} blocks")
        text = " ".join(t.strip() for t in texts if t.strip())
        raw = message.response_metadata.get("raw_text") if isinstance(message, AIMessage) else None
        if isinstance(raw, str):
            text = raw.strip()
        if isinstance(message, SystemMessage):
            if text:
                system.append(text)
            continue
        side = "ai" if isinstance(message, AIMessage) else "human"
        if side == "ai" and not text:  # only tool calls (or reasoning): no answer to show BLIP-2
            continue
        if sides and sides[-1][0] == side:
            sides[-1][1].append(text)
        else:
            sides.append((side, [text]))
    if not sides or sides[-1][0] != "human":
        raise OptionError("the last message must be the user's (a human message) for BLIP-2 to answer it")
    joined = [(side, " ".join(t for t in texts if t)) for side, texts in sides]
    turns: list[tuple[str, str]] = []
    pending_question = ""
    for side, text in joined[:-1]:
        if side == "human":
            pending_question = text
        else:
            turns.append((pending_question, text))
            pending_question = ""
    image = (images[-1] if image_choice == "latest" else images[0]) if images else None
    return Dialogue(" ".join(system) or None, turns, joined[-1][1], image)
