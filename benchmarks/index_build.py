"""Indexing throughput: ``build_index(host, paths)`` vs raw batched embedding with transformers.

The same N PNG files (640x480) in both arms, the same batch size. The raw arm is a loop over batches:
``Image.open(p).convert("RGB")``, ``processor(images=batch)`` and ``retrieval.image_embeddings(model,
pixel_values)`` (the retrieval model's ITC embeddings); it keeps the embeddings and builds no index.
The index arm is :func:`blip2plugins.index.build_index` (the host loads the next chunk while it embeds
this one, and fills a FAISS index). Ratio = raw time / index time; goal at least 0.9x. Also prints
how close the two arms' embeddings are, and the index file's size per 1,000 images.

    python benchmarks/index_build.py [--quick] [--model demo] [--images 256] [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import _common as c
import torch
from PIL import Image

GOAL = 0.9


def load_retrieval_host(args: Any) -> Any:
    """A host of ``args.model``'s retrieval model (a generation preset's companion loads alone); a
    random-weights retrieval model of the demo's size while the demo's is missing."""
    from blip2plugins.building import ModelSpec, build_processor, build_retrieval_model, train_tokenizer
    from blip2plugins.demo import MODEL_DIR, world
    from blip2plugins.families import OPT
    from blip2plugins.host import Host
    from blip2plugins.presets import resolve

    preset = resolve(args.model)
    name = preset.retrieval if preset.kind == "generation" and preset.retrieval else args.model
    source, note = name, ""
    if name == "demo-retrieval" and not (MODEL_DIR / "retrieval" / "config.json").is_file():
        print(f"WARNING: the demo retrieval model is missing ({MODEL_DIR}/retrieval): using a random-weights "
              "stand-in of the demo's size. Timings hold; re-run when it exists for the real numbers.")
        spec = ModelSpec(**c.DEMO_LIKE)
        processor = build_processor(train_tokenizer(world.corpus(OPT.render_question), "opt"), spec)
        folder = Path(tempfile.mkdtemp(prefix="blip2-bench-retrieval-"))
        build_retrieval_model(processor, spec, seed=args.seed).save_pretrained(folder)
        processor.save_pretrained(folder)
        source, note = str(folder), " (random weights, built here)"
    host = Host.load(source, max_batch_size=getattr(args, "batch", 32))
    head = host.loaded.retrieval
    params = sum(p.numel() for p in head.model.parameters())
    size = head.model.config.vision_config.image_size
    print(f"retrieval model: {name}{note}: {params / 1e6:.2f}M parameters, {size}x{size} input, "
          f"Q={host.num_query_tokens} D={host.embedding_dim}; host max_batch_size {host.max_batch_size}")
    return host


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=None, help="PNG files (default 256, --quick 32)")
    p.add_argument("--batch", type=int, default=32, help="batch size of both arms (default 32)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per arm, interleaved (default 3, --quick 1)")
    args = p.parse_args()
    count = args.images or (32 if args.quick else 256)
    rounds = args.rounds or (1 if args.quick else 3)
    c.setup(args, f"index build: {count} PNG files of 640x480, batch {args.batch}, {rounds} rounds")

    from blip2plugins import retrieval
    from blip2plugins.index import build_index

    host = load_retrieval_host(args)
    head = host.loaded.retrieval
    paths = c.write_pngs(c.draw_images(count, 640, 480, seed=args.seed), prefix="blip2-bench-index-")

    def index_arm() -> Any:
        index, report = build_index(host, paths, batch_size=args.batch, progress=False)
        assert not report.failed and len(index) == count, report.failed
        return index

    def raw_arm() -> torch.Tensor:
        out = []
        for start in range(0, count, args.batch):
            images = [Image.open(path).convert("RGB") for path in paths[start:start + args.batch]]
            pixels = head.processor(images=images, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out.append(retrieval.image_embeddings(head.model, pixels))
        return torch.cat(out)

    index_arm()
    raw_arm()
    index_times: list[float] = []
    raw_times: list[float] = []
    for i in range(rounds):  # interleaved, alternating which arm goes first, so drift hits both
        arms = [(index_arm, index_times), (raw_arm, raw_times)]
        for fn, times in arms if i % 2 == 0 else arms[::-1]:
            t, value = c.timed(fn)
            times.append(t)
            if fn is index_arm:
                index = value
            else:
                raw = value
    index_s, raw_s = c.median(index_times), c.median(raw_times)
    c.table(["arm", "median s", "min s", "images/s"], [
        ["build_index(host, paths)", index_s, min(index_times), count / index_s],
        ["raw batched embedding", raw_s, min(raw_times), count / raw_s],
    ])
    text = host.embed_texts("a red circle")
    itc_raw = retrieval.itc(raw, text[None, :])[:, 0]
    top = {h.source for h in index.search_vector(text, 10)}
    same = len(top & {paths[i] for i in itc_raw.topk(min(10, count)).indices.tolist()})
    print(f"top-10 images for 'a red circle' shared by both arms' embeddings: {same}/10 (the host shrinks "
          "large images with Pillow before the processor, so embeddings differ slightly)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.index"
        index.save(path)
        size = path.stat().st_size
    print(f"index file: {size / 1e6:.2f} MB for {count} images = {size / count * 1000 / 1e6:.2f} MB per 1k images "
          f"(Q={index.queries} + 1 pooled vectors of D={index.dim} float32 per image, ids, paths)")
    c.verdict(raw_s / index_s, GOAL)
    host.close()


if __name__ == "__main__":
    main()
