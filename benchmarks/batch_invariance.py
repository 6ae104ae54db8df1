"""Batch invariance: does a caption depend on its batch-mates, per precision, and what does
``batch_invariant=True`` cost?

For each load option (float32, bfloat16, 8-bit, 4-bit) the same images are captioned greedily,
each with a caption prompt of its own length (0 to 13 words): one at a time, then by concurrent
callers whose requests the host batches (padded to the longest prompt). It counts the captions
whose text differs and the scores that differ by more than 1e-6, then times the concurrent callers
again with ``batch_invariant=True`` (each request runs alone) and prints the ratio. 8/4-bit need
bitsandbytes.

    python benchmarks/batch_invariance.py [--model demo|random-demo|FOLDER] [--images 24]
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _common
from _common import table, timed

OPTIONS: list[dict[str, str]] = [{}, {"dtype": "bfloat16"}, {"quantize": "8bit"}, {"quantize": "4bit"}]


def main() -> None:
    parser = _common.parser(__doc__.splitlines()[0], max_new_tokens=12)
    parser.add_argument("--images", type=int, default=24, help="images to caption (default 24)")
    args = parser.parse_args()
    _common.setup(args, "batch invariance")
    images = _common.draw_images(8 if args.quick else args.images, 160, 120, seed=args.seed)
    words = "a red circle and a blue square on a gray background the dog runs".split()
    items = [(image, " ".join(words[: 3 * i % 14])) for i, image in enumerate(images)]
    options = {"max_new_tokens": args.max_new_tokens}

    def concurrently(host: Any) -> list[Any]:
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(lambda item: host.caption(item[0], prompt=item[1], **options), items))
    rows = []
    for option in OPTIONS:
        label = ", ".join(f"{k}={v}" for k, v in option.items()) or "float32"
        if "quantize" in option and importlib.util.find_spec("bitsandbytes") is None:
            print(f"{label}: skipped, bitsandbytes is not installed")
            continue
        host, _ = _common.load_host(args, **option)
        with host:
            alone = [host.caption(image, prompt=prompt, **options) for image, prompt in items]
            batched_s, together = timed(lambda: concurrently(host))
        invariant, _ = _common.load_host(args, batch_invariant=True, **option)
        with invariant:
            invariant_s, isolated = timed(lambda: concurrently(invariant))
        texts = sum(a.raw_text != b.raw_text for a, b in zip(alone, together))
        scores = sum(abs(a.score - b.score) > 1e-6 for a, b in zip(alone, together))
        same = all(a.raw_text == b.raw_text and a.score == b.score for a, b in zip(alone, isolated))
        rows.append([label, f"{texts}/{len(images)}", f"{scores}/{len(images)}", batched_s, invariant_s,
                     invariant_s / batched_s, "yes" if same else "NO"])
    table(["load", "texts differ", "scores differ", "batched s", "invariant s", "cost x", "invariant = alone"], rows)


if __name__ == "__main__":
    main()
