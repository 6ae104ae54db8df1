"""Captioning a folder of photos: ``host.caption(paths)`` vs a plain one-image-at-a-time transformers loop.

Both arms read the same 640x480 PNG files from disk and generate greedily with the same
``max_new_tokens``. Goal: the host is at least 8x faster.

    python benchmarks/caption_throughput.py [--quick] [--model demo] [--images 256] [--rounds 3]

Each round times both arms, one after the other; the ratio is of the two arms' median times.
"""

from __future__ import annotations

import os
import statistics

import _common as c
from PIL import Image

GOAL = 8.0


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="number of images (default 256, --quick 32)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rounds", type=int, default=None, help="rounds per arm (default 3, --quick 1)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the where-does-the-time-go section")
    args = p.parse_args()
    n = args.images or (32 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)
    c.setup(args, f"caption throughput: {n} images {args.width}x{args.height} PNG, max_new_tokens {args.max_new_tokens}")

    host, _ = c.load_host(args)
    model, processor = host.loaded.model, host.loaded.processor
    queries = host.loaded.num_query_tokens
    paths = c.write_pngs(c.draw_images(n, args.width, args.height, seed=args.seed))
    tokens = args.max_new_tokens

    def host_arm(batch: list[str]) -> list[str]:
        return [r.text for r in host.caption(batch, max_new_tokens=tokens)]

    generated: list[int] = []

    def raw_arm(batch: list[str]) -> list[str]:
        texts = []
        generated.clear()
        for path in batch:
            inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=tokens)
            generated.append(out.shape[1] - queries - 1)
            # generate returns the prompt it built (image tokens + BOS) before the new tokens
            texts.append(processor.batch_decode(out[:, queries + 1:], skip_special_tokens=True)[0].strip())
        return texts

    warm = paths[: min(8, n)]
    host_arm(warm)
    raw_arm(warm)
    host_times, raw_times = [], []
    for _ in range(rounds):
        before = host.stats()
        host_s, host_texts = c.timed(lambda: host_arm(paths))
        after = host.stats()
        raw_s, raw_texts = c.timed(lambda: raw_arm(paths))
        host_times.append(host_s)
        raw_times.append(raw_s)
    host_s, raw_s = c.median(host_times), c.median(raw_times)

    same = sum(a == b for a, b in zip(host_texts, raw_texts))
    c.table(["arm", "median s", "images/s", "ms/image", "each round (s)"], [
        ["host.caption(paths)", host_s, n / host_s, 1000 * host_s / n, " ".join(f"{t:.3f}" for t in host_times)],
        ["per-image generate", raw_s, n / raw_s, 1000 * raw_s / n, " ".join(f"{t:.3f}" for t in raw_times)],
    ])
    print(f"host batches {after['batches'] - before['batches']} for {n} images "
          f"(largest {after['largest_batch']}); same captions in both arms: {same}/{n}; "
          f"new tokens per caption (EOS included) mean {statistics.mean(generated):.1f} (cap {tokens}); "
          f"e.g. {host_texts[0]!r}")

    if not args.no_breakdown:
        busy = breakdown(host, paths, tokens)
        cores = len(os.sched_getaffinity(0))
        print(f"ceiling: load, resize and caption keep a core busy {1000 * busy:.2f} ms per image; on {cores} cores "
              f"the host's best is about {1000 * busy / cores:.2f} ms per image, {raw_s / n / (busy / cores):.1f}x this run's baseline")
    c.verdict(raw_s / host_s, GOAL)
    host.close()


def breakdown(host, paths: list[str], tokens: int) -> float:
    """Where the host's time goes, each stage timed alone in this thread (no overlap); returns the
    seconds per image of the stages the host runs (load, resize, then the caption call, which
    normalises and runs the model)."""
    from blip2plugins.images import load_image

    chunk = host.max_batch_size
    load_s, images = c.timed(lambda: [load_image(p) for p in paths])
    size = tuple(host.loaded.processor.image_processor.size[k] for k in ("width", "height"))
    resize_s, small = c.timed(lambda: [im.resize(size, Image.Resampling.BICUBIC) for im in images])
    prep_s, _ = c.timed(lambda: [host.preprocess(small[i:i + chunk]) for i in range(0, len(small), chunk)])
    gen_s, results = c.timed(lambda: host.caption(small, max_new_tokens=tokens))
    opened_s, _ = c.timed(lambda: [Image.open(p).convert("RGB") for p in paths])
    n = len(paths)
    timings = {k: statistics.mean(r.timings.get(k, 0.0) for r in results)
               for k in ("preprocess_s", "queue_s", "encode_s", "generate_s")}
    print("breakdown (each stage alone, whole set):")
    c.table(["stage", "seconds", "ms/image"], [
        ["load_image (read, decode, exif, RGB)", load_s, 1000 * load_s / n],
        ["  vs Image.open(p).convert('RGB')", opened_s, 1000 * opened_s / n],
        ["Pillow resize to model size", resize_s, 1000 * resize_s / n],
        ["host.preprocess on model-size images", prep_s, 1000 * prep_s / n],
        ["host.caption(model-size PIL images)", gen_s, 1000 * gen_s / n],
    ])
    print("  host timings of that last call (mean over items, ms; encode and generate are per batch): "
          + ", ".join(f"{k[:-2]} {1000 * v:.2f}" for k, v in timings.items()))
    return (load_s + resize_s + gen_s) / n


if __name__ == "__main__":
    main()
