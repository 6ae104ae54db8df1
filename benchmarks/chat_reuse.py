"""Ten questions about one image: a host chat (image encoded once) vs re-encoding it for every question.

The re-encoding arm renders exactly the prompt the chat renders (``prompts.render_chat``, past
turns included, fed its own answers) and runs ``processor`` + ``model.generate`` for each question,
so the vision encoder and Q-Former run ten times instead of once. Both arms must give identical
answers. Default model: about 7M parameters at 224 px with random weights, built here.
Goal: at least 2x faster, with identical answers.

    python benchmarks/chat_reuse.py [--quick] [--model random-7m] [--rounds 5]
"""

from __future__ import annotations

import random

import _common as c
import torch

from blip2plugins.prompts import render_chat

GOAL = 2.0
QUESTIONS = [
    "what color is the circle?", "how many shapes?", "is there a triangle?", "what color is the square?",
    "is there a circle?", "what color is the triangle?", "is there a square?", "what is in the picture?",
    "which shape is the largest?", "what color is the background?",
]


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], default_model="random-7m", max_new_tokens=10)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds, median reported (default 5, --quick 1)")
    p.add_argument("--questions", type=int, default=None, help="questions per chat (default 10, --quick 3)")
    p.add_argument("--hidden", type=int, default=c.SEVEN_M["hidden"], help="width of the random-7m model")
    p.add_argument("--layers", type=int, default=c.SEVEN_M["layers"], help="layers of the Q-Former and language model of the random-7m model")
    args = p.parse_args()
    c.SEVEN_M.update(hidden=args.hidden, layers=args.layers)
    rounds = args.rounds or (1 if args.quick else 5)
    questions = QUESTIONS[: args.questions or (3 if args.quick else 10)]
    c.setup(args, f"chat reuse: {len(questions)} questions on one image, max_new_tokens {args.max_new_tokens}, "
                  f"{rounds} round(s)")

    host, _ = c.load_host(args)
    model, processor = host.loaded.model, host.loaded.processor
    size = host.loaded.model.config.vision_config.image_size
    image = c.draw_image(random.Random(args.seed), size, size)  # in memory, at model size: both arms

    turns: list = []

    def host_arm() -> list[str]:
        conv = host.chat(image, max_new_tokens=args.max_new_tokens)
        turns[:] = [conv.ask(q) for q in questions]
        return [r.text for r in turns]

    def raw_arm() -> list[str]:
        past: list[tuple[str, str]] = []
        answers = []
        for q in questions:
            prompt = render_chat(host.loaded, past, q, max_new_tokens=args.max_new_tokens)
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens)
            answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
            past.append((q, answer))
            answers.append(answer)
        return answers

    host_arm()
    raw_arm()
    host_times, raw_times, identical = [], [], True
    for _ in range(rounds):
        t, host_answers = c.timed(host_arm)
        host_times.append(t)
        t, raw_answers = c.timed(raw_arm)
        raw_times.append(t)
        identical &= host_answers == raw_answers
    host_s, raw_s = c.median(host_times), c.median(raw_times)
    q = len(questions)
    c.table(["arm", "median s", "ms/question", "min s"], [
        ["host chat (encode once)", host_s, 1000 * host_s / q, min(host_times)],
        ["re-encode per question", raw_s, 1000 * raw_s / q, min(raw_times)],
    ])
    encode_s = encode_time(host, image)
    mean = {k: 1000 * sum(r.timings[k] for r in turns) / len(turns) for k in ("queue_s", "generate_s")}
    print(f"host per turn (last round, mean): queue {mean['queue_s']:.2f} ms, generate {mean['generate_s']:.2f} ms")
    print(f"vision encoder + Q-Former alone: {1000 * encode_s:.1f} ms per image; "
          f"answers identical: {'yes' if identical else 'no'}; e.g. {host_answers[0]!r}")
    if not identical:
        for a, b in zip(host_answers, raw_answers):
            if a != b:
                print(f"  first difference: host {a!r} vs re-encode {b!r}")
                break
    c.verdict(raw_s / host_s, GOAL, " with identical answers", ok=identical)
    host.close()


def encode_time(host, image) -> float:
    """Median seconds of the vision encoder and Q-Former on one image (the model's own forward)."""
    loaded = host.loaded
    pixel_values = host.preprocess([image]).to(loaded.device, loaded.dtype)
    with torch.inference_mode():
        loaded.model.get_image_features(pixel_values=pixel_values)
        times = [c.timed(lambda: loaded.model.get_image_features(pixel_values=pixel_values))[0] for _ in range(5)]
    return c.median(times)


if __name__ == "__main__":
    main()
