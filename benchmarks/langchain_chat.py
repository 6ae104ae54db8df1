"""A 10-turn LangChain conversation about one image: ChatBlip2 vs re-encoding the image every turn.

Both arms get the same messages a LangChain app sends (the whole history each turn, the image as a
base64 PNG block in the first message) and give the model the same prompts. The re-encoding arm is
what a plain wrapper does: decode the image and run ``processor`` + ``model.generate`` every turn.
ChatBlip2 encodes the image once (cached by content hash) and generates through the host. Each
round uses a new image, so every round pays its first encoding. Also measured: time to the first
streamed chunk vs the whole answer. Default model: about 7M parameters at 224 px, random weights.
Goal: at least 2x faster, with identical answers.

    python benchmarks/langchain_chat.py [--quick] [--model random-7m] [--rounds 5] [--turns 10]
"""

from __future__ import annotations

import base64
import io
import random
import time

import _common as c
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from PIL import Image

from blip2plugins_langchain import ChatBlip2

GOAL = 2.0
QUESTIONS = [
    "what color is the circle?", "how many shapes?", "is there a triangle?", "what color is the square?",
    "is there a circle?", "what color is the triangle?", "is there a square?", "what is in the picture?",
    "which shape is the largest?", "what color is the background?",
]


def png_block(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode(), "mime_type": "image/png"}


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], default_model="random-7m", max_new_tokens=10)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds, median reported (default 5, --quick 1)")
    p.add_argument("--turns", type=int, default=None, help="turns per conversation (default 10, --quick 3)")
    p.add_argument("--stream-tokens", type=int, default=40, help="answer length for the streaming measurement")
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    questions = QUESTIONS[: args.turns or (3 if args.quick else 10)]
    c.setup(args, f"LangChain chat: {len(questions)} turns on one image, max_new_tokens {args.max_new_tokens}, "
                  f"{rounds} round(s)")
    host, _ = c.load_host(args)
    model, processor = host.loaded.model, host.loaded.processor
    size = model.config.vision_config.image_size
    rng = random.Random(args.seed)
    chat = ChatBlip2(host=host, max_tokens=args.max_new_tokens, model_kwargs={"min_new_tokens": 0})

    def conversation(block: dict, answer) -> tuple[list[str], list[str]]:
        """Run the turns with ``answer(messages) -> (text, prompt)``; return answers and prompts."""
        messages: list[BaseMessage] = []
        answers, prompts = [], []
        for i, question in enumerate(questions):
            content = [{"type": "text", "text": question}, *([block] if i == 0 else [])]
            messages.append(HumanMessage(content=content))
            text, prompt = answer(messages)
            messages.append(AIMessage(text))
            answers.append(text)
            prompts.append(prompt)
        return answers, prompts

    def chatblip2(messages: list[BaseMessage]) -> tuple[str, str]:
        reply = chat.invoke(messages)
        return reply.text, reply.response_metadata["prompt"]

    def reencode(prompts: list[str]):
        """A plain wrapper: decode the image from the message and run processor + generate, every turn."""
        def answer(messages: list[BaseMessage]) -> tuple[str, str]:
            data = messages[0].content_blocks[1]["base64"]
            image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
            prompt = prompts[len(messages) // 2]
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens)
            new = out[:, inputs["input_ids"].shape[1]:]
            return processor.batch_decode(new, skip_special_tokens=True)[0].strip(), prompt
        return answer

    warm = png_block(c.draw_image(rng, size, size))
    _, warm_prompts = conversation(warm, chatblip2)
    conversation(warm, reencode(warm_prompts))
    chat_times, raw_times, identical = [], [], True
    for _ in range(rounds):
        block = png_block(c.draw_image(rng, size, size))  # a new image: ChatBlip2 must encode it once
        encoded = host.stats()["encoded"]
        t, (chat_answers, prompts) = c.timed(lambda: conversation(block, chatblip2))
        chat_times.append(t)
        assert host.stats()["encoded"] - encoded == 1
        t, (raw_answers, _) = c.timed(lambda: conversation(block, reencode(prompts)))
        raw_times.append(t)
        identical &= chat_answers == raw_answers
    chat_s, raw_s = c.median(chat_times), c.median(raw_times)
    n = len(questions)
    c.table(["arm", "median s", "ms/turn", "min s"], [
        ["ChatBlip2 (image encoded once)", chat_s, 1000 * chat_s / n, min(chat_times)],
        ["re-encode every turn", raw_s, 1000 * raw_s / n, min(raw_times)],
    ])
    print(f"answers identical: {'yes' if identical else 'no'}; last prompt has {len(prompts[-1].split())} words, "
          f"e.g. {chat_answers[0]!r}")
    c.verdict(raw_s / chat_s, GOAL, " with identical answers", ok=identical)

    streaming = ChatBlip2(host=host, max_tokens=args.stream_tokens, model_kwargs={"min_new_tokens": args.stream_tokens})
    firsts, wholes = [], []
    for _ in range(max(rounds, 3)):
        messages = [HumanMessage(content=[png_block(c.draw_image(rng, size, size))])]
        streaming.invoke(messages)  # encode the image first: measure generation only
        start = time.perf_counter()
        first = None
        for chunk in streaming.stream(messages):
            if first is None and chunk.text:
                first = time.perf_counter() - start
        firsts.append(first or 0.0)
        wholes.append(time.perf_counter() - start)
    first_s, whole_s = c.median(firsts), c.median(wholes)
    print(f"streaming {args.stream_tokens} tokens: first chunk after {1000 * first_s:.1f} ms, whole answer "
          f"{1000 * whole_s:.1f} ms: first text {whole_s / first_s:.1f}x sooner")
    host.close()


if __name__ == "__main__":
    main()
