"""What the host costs on top of transformers for one batch: ``host.caption(images)`` vs raw batched generate.

32 in-memory PIL images already at the model's input size (so no resizing in either arm), greedy,
same ``max_new_tokens``. The raw arm is ``processor(images=batch)`` + ``model.generate`` + decode.
Ratio = raw time / host time. Goal: at least 0.95x (the host adds at most about 5%).

    python benchmarks/batch_overhead.py [--quick] [--model demo] [--batch 32] [--rounds 30]
"""

from __future__ import annotations

import _common as c

GOAL = 0.95


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per arm, interleaved (default 30, --quick 5)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the profile of one host call")
    args = p.parse_args()
    rounds = args.rounds or (5 if args.quick else 30)
    c.setup(args, f"batch overhead: batch {args.batch}, max_new_tokens {args.max_new_tokens}, {rounds} rounds")

    host, _ = c.load_host(args)
    model, processor = host.loaded.model, host.loaded.processor
    queries = host.loaded.num_query_tokens
    size = host.loaded.model.config.vision_config.image_size
    images = c.draw_images(args.batch, size, size, seed=args.seed)
    tokens = args.max_new_tokens

    def host_arm() -> list[str]:
        return [r.text for r in host.caption(images, max_new_tokens=tokens)]

    def raw_arm() -> list[str]:
        inputs = processor(images=images, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=tokens)
        return [t.strip() for t in processor.batch_decode(out[:, queries + 1:], skip_special_tokens=True)]

    host_arm()
    raw_arm()
    host_times, raw_times = [], []
    for i in range(rounds):  # interleaved, alternating which arm goes first, so drift hits both
        arms = [(host_arm, host_times), (raw_arm, raw_times)]
        for fn, times in arms if i % 2 == 0 else arms[::-1]:
            t, texts = c.timed(fn)
            times.append(t)
            if fn is host_arm:
                host_texts = texts
            else:
                raw_texts = texts
    host_s, raw_s = c.median(host_times), c.median(raw_times)
    same = sum(a == b for a, b in zip(host_texts, raw_texts))
    c.table(["arm", "median ms", "min ms", "ms/image"], [
        ["host.caption(list)", 1000 * host_s, 1000 * min(host_times), 1000 * host_s / args.batch],
        ["raw batched generate", 1000 * raw_s, 1000 * min(raw_times), 1000 * raw_s / args.batch],
    ])
    print(f"same captions: {same}/{args.batch}; host largest batch {host.stats()['largest_batch']}")
    if not args.no_breakdown:
        profile(host, images, tokens)
    c.verdict(raw_s / host_s, GOAL)
    host.close()


def profile(host, images, tokens: int) -> None:
    """The host's own per-item timings for one call, and its caller-side steps timed alone."""
    from blip2plugins.images import load_image

    results = host.caption(images, max_new_tokens=tokens)
    r = results[0].timings
    load_s, loaded = c.timed(lambda: [load_image(im) for im in images])
    prep_s, _ = c.timed(lambda: host.preprocess(loaded))
    print(f"one host call: preprocess {1000 * r['preprocess_s'] * len(images):.2f} ms (whole batch; load_image "
          f"{1000 * load_s:.2f}, preprocess {1000 * prep_s:.2f}), queue {1000 * r['queue_s']:.2f} ms, "
          f"encode {1000 * r['encode_s']:.2f} ms, generate+score+decode {1000 * r['generate_s']:.2f} ms")


if __name__ == "__main__":
    main()
