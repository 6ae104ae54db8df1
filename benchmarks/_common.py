"""Shared helpers of the benchmark scripts: options, models, images, timing and the verdict line.

The scripts report, they do not gate: they always exit 0.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

# Runnable from a checkout without installing: ``python benchmarks/x.py``.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

transformers.utils.logging.disable_progress_bar()

T = TypeVar("T")

#: The bundled demo model's sizes (see blip2plugins/demo/recipe.py): a random-weights stand-in
#: used while the trained model is not there yet.
DEMO_LIKE = dict(image_size=64, patch_size=8, hidden=64, layers=2, heads=4, num_query_tokens=8, max_positions=160,
                 vision_layers=2, vision_hidden=96)
#: About 7M parameters at 224 px (the size the notes measured "encode once, ask many" on), with the
#: vision encoder deeper than the language model, as in the real checkpoints: in blip2-opt-2.7b the
#: ViT-g (39 layers over 257 tokens) costs about 60% of the FLOPs of a 10-token answer.
SEVEN_M = dict(image_size=224, patch_size=16, hidden=192, layers=2, vision_layers=8, heads=4, num_query_tokens=32,
               max_positions=128)
BUILT = {"random-demo": DEMO_LIKE, "random-7m": SEVEN_M}


def parser(description: str, *, default_model: str = "demo", max_new_tokens: int = 20) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=default_model,
                   help="preset name, checkpoint folder, or a model built here with random weights: "
                        f"{', '.join(BUILT)} (default: {default_model}; 'demo' falls back to random-demo "
                        "while the bundled model is missing)")
    p.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"generation length cap, same in both arms (default {max_new_tokens})")
    p.add_argument("--max-wait", type=float, default=None,
                   help="Host(max_wait=...) in seconds, to see what the batching window costs (default: the host's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast-preprocess", action="store_true",
                   help="Host(fast_preprocess=True): inexact, faster image preparation (default: exact)")
    return p


def setup(args: argparse.Namespace, title: str) -> None:
    torch.set_num_threads(args.threads)
    load1, load5, _ = os.getloadavg()
    print(f"== {title}")
    print(f"torch {torch.__version__}, threads {args.threads}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"cpus {os.cpu_count()}, "
          f"load average {load1:.2f} (1 min) {load5:.2f} (5 min)")
    if load1 > 0.5:
        print(f"note: the machine is busy (load {load1:.1f} before start): absolute times are inflated, "
              "ratios less so")


def build_model(kind: str, seed: int = 0) -> str:
    """Build a random-weights BLIP-2 (OPT) of the named size into a temp folder; return the folder."""
    from blip2plugins.building import ModelSpec, build
    from blip2plugins.demo import world
    from blip2plugins.families import OPT

    spec = ModelSpec(**BUILT[kind])
    model, processor = build(world.corpus(OPT.render_question), "opt", spec, seed=seed)
    folder = Path(tempfile.mkdtemp(prefix=f"blip2-bench-{kind}-"))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def load_host(args: argparse.Namespace, **kwargs: Any) -> tuple[Any, str]:
    """A :class:`Host` for ``args.model`` and a one-line description of the model."""
    from blip2plugins.demo import MODEL_DIR
    from blip2plugins.host import Host

    name, note = args.model, ""
    if name == "demo" and not (MODEL_DIR / "config.json").is_file():
        print(f"WARNING: the bundled demo model is missing ({MODEL_DIR}/config.json): using a random-weights "
              "stand-in of the same size. It always generates max_new_tokens, the trained model stops early: "
              "re-run when the demo model exists for the real numbers.")
        name = "random-demo"
    source = name
    if name in BUILT:
        source = build_model(name, args.seed)
        note = " (random weights, built here)"
    if args.max_wait is not None:
        kwargs["max_wait"] = args.max_wait
    if getattr(args, "fast_preprocess", False):
        kwargs["fast_preprocess"] = True
    host = Host.load(source, **kwargs)
    params = sum(p.numel() for p in host.loaded.model.parameters())
    size = host.loaded.model.config.vision_config.image_size
    print(f"model: {name}{note}: {params / 1e6:.2f}M parameters, {size}x{size} input, "
          f"{host.loaded.num_query_tokens} queries; host max_batch_size {host.max_batch_size}, "
          f"max_wait {host.max_wait * 1000:g} ms, {'fast' if host.fast_preprocess else 'exact'} preprocessing")
    return host, name


def draw_image(rng: random.Random, width: int, height: int) -> Image.Image:
    """A background colour and 1-3 coloured shapes (circle, square, triangle)."""
    palette = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 210, 40), (250, 250, 250), (90, 90, 90)]
    image = Image.new("RGB", (width, height), rng.choice([(255, 255, 255), (128, 128, 128), (30, 30, 30)]))
    draw = ImageDraw.Draw(image)
    unit = min(width, height)
    for kind in rng.sample(["circle", "square", "triangle"], rng.randint(1, 3)):
        size = rng.randint(unit // 4, unit // 2)
        x, y = rng.randint(0, width - size), rng.randint(0, height - size)
        box = (x, y, x + size - 1, y + size - 1)
        colour = rng.choice(palette[:4])
        if kind == "circle":
            draw.ellipse(box, fill=colour)
        elif kind == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x + size / 2, y), (box[2], box[3]), (x, box[3])], fill=colour)
    return image


def draw_images(n: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    rng = random.Random(seed)
    return [draw_image(rng, width, height) for _ in range(n)]


def write_pngs(images: list[Image.Image], prefix: str = "blip2-bench-images-") -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    paths = []
    for i, image in enumerate(images):
        path = folder / f"image-{i:04d}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) for c in header]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def verdict(ratio: float, goal: float, extra: str = "", ok: bool = True) -> None:
    digits = 2 if goal < 2 else 1
    passed = ratio >= goal and ok
    print(f"ratio: {ratio:.{digits}f}x (goal >= {goal:g}x{extra}) {'PASS' if passed else 'FAIL'}")
