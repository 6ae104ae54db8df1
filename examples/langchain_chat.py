"""A multi-turn chat about an image with ChatBlip2, on the bundled demo model (offline, seconds).

    pip install -e adapters/langchain && python examples/langchain_chat.py

The conversation is the prompt: each call sends the whole history, ChatBlip2 renders it in the
model's template (see ``response_metadata["prompt"]``) and reuses the image encoded on the first
turn. The demo model only knows synthetic shape scenes and was trained on single questions.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from langchain_core.messages import HumanMessage

from blip2plugins_langchain import ChatBlip2

IMAGE = Path(__file__).resolve().parent / "images" / "blue-square_yellow-triangle_on-white.png"


def main() -> None:
    chat = ChatBlip2(model="demo")  # loads nothing yet; the model loads on the first call
    image = {"type": "image", "base64": base64.b64encode(IMAGE.read_bytes()).decode(), "mime_type": "image/png"}

    encoded = chat.get_host().stats()["encoded"]  # loads the model now
    history = [HumanMessage(content=[{"type": "text", "text": "what color is the triangle?"}, image])]
    for follow_up in ["how many shapes?", None]:
        reply = chat.invoke(history)
        print(f"user: {history[-1].text}\nblip2: {reply.text}")
        print(f"  (model saw: {reply.response_metadata['prompt']!r}; tokens in/out: "
              f"{reply.usage_metadata['input_tokens']}/{reply.usage_metadata['output_tokens']})")
        if follow_up is None:
            break
        history += [reply, HumanMessage(follow_up)]  # no image: the first turn's image is still the one seen
    print(f"images encoded for these two turns: {chat.get_host().stats()['encoded'] - encoded}")

    print("streamed caption: ", end="")
    for chunk in chat.stream([HumanMessage(content=[image])]):  # an image without text asks for a caption
        print(chunk.text, end="|", flush=True)
    print()

    questions = ["what color is the square?", "is there a circle?", "is there a triangle?"]
    replies = chat.batch([[HumanMessage(content=[{"type": "text", "text": q}, image])] for q in questions])
    print("batch:", {q: r.text for q, r in zip(questions, replies)})

    async def ask_async() -> str:
        return (await chat.ainvoke([HumanMessage(content=[{"type": "text", "text": "how many shapes?"}, image])])).text

    print("async:", asyncio.run(ask_async()))
    print("stop at ' and':", chat.invoke([HumanMessage(content=[image])], stop=[" and"]).text)


if __name__ == "__main__":
    main()
