"""Stage 1 of the demo recipe: pretrain the vision encoder to see the world's shapes.

BLIP-2 starts from an image encoder that was trained before it and is kept frozen. The demo does the
same at its scale: a linear head on the mean of the encoder's outputs names, for each shape kind, its
colour or its absence (:func:`kind_colours`), trained with cross-entropy on pictures drawn in random
looks (:func:`blip2plugins.demo.world.random_look`). That direct signal teaches a from-scratch ViT
in minutes what the captioning loss alone taught it far more slowly (and only for one drawing routine).

The pictures are drawn once into a pool of uint8 tensors at the encoder's input size (by worker
processes) and sampled with horizontal flips. A curriculum starts on plain 20 px scenes: the share
of pictures in the whole world's sizes and looks grows linearly to all over the first ``ramp`` of
the steps.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import random
import time
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from PIL import Image

from . import world

#: Classes of each kind's slot: absent, then the basic colours.
SLOT_CLASSES = 1 + len(world.BASIC_COLOURS)
T = TypeVar("T")


def kind_colours(scene: world.Scene) -> list[int]:
    """Per shape kind (in :data:`world.SHAPES` order): 0 when absent, else 1 + its colour's index."""
    return [0 if (s := scene.shape(kind)) is None else 1 + world.BASIC_COLOURS.index(s.colour) for kind in world.SHAPES]


def _scene(seed: int, i: int) -> tuple[world.Scene, random.Random]:
    """Pool entry ``i``'s scene and the generator that goes on to draw its look."""
    rng = random.Random(f"vision:{seed}:{i}")
    return world.random_scene(rng, size=(20, 20) if i % 2 else world.SIZE), rng


def pool_picture(seed: int, i: int) -> tuple[Image.Image, list[int]]:
    """Pool entry ``i`` and its :func:`kind_colours`: odd entries are plain scenes of 20 px shapes,
    even ones the whole world in a random look."""
    scene, rng = _scene(seed, i)
    image = world.render(scene) if i % 2 else world.draw(scene, world.random_look(rng), seed=seed * 1_000_003 + i)
    return image, kind_colours(scene)


def _draw_chunk(args: tuple[Any, Callable[[int], tuple[Image.Image, T]], int, int]) -> tuple[np.ndarray, list[T]]:
    image_processor, draw, start, stop = args
    images, facts = zip(*(draw(i) for i in range(start, stop)))
    pixels = image_processor(list(images), do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    if pixels.dtype != np.uint8:  # a backend that resizes in floating point
        pixels = np.rint(pixels).clip(0, 255).astype(np.uint8)
    return pixels, list(facts)


def draw_pool(n: int, image_processor: Any, draw: Callable[[int], tuple[Image.Image, T]], *,
              workers: int = 2) -> tuple[torch.Tensor, list[T]]:
    """The pictures of ``draw(i)`` for ``i < n``, resized by ``image_processor`` (uint8, N x 3 x S x S),
    and what ``draw`` gave beside each (its scene, its labels...).

    ``workers`` processes draw chunks of 1,000 (``draw`` must pickle: a module-level function,
    a ``functools.partial`` of one, or a method of a picklable object); the pool is the same for any
    number of workers.
    """
    chunks = [(image_processor, draw, start, min(n, start + 1000)) for start in range(0, n, 1000)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_draw_chunk, chunks)
    else:
        parts = [_draw_chunk(chunk) for chunk in chunks]
    return torch.from_numpy(np.concatenate([pixels for pixels, _ in parts])), [f for _, facts in parts for f in facts]


def vision_pool(n: int, seed: int, image_processor: Any, *, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1's ``n`` pictures (:func:`pool_picture`) and their :func:`kind_colours`."""
    pixels, labels = draw_pool(n, image_processor, functools.partial(pool_picture, seed), workers=workers)
    return pixels, torch.tensor(labels, dtype=torch.long)


def pretrain_vision(vision_model: torch.nn.Module, image_processor: Any, *, seed: int, steps: int,
                    batch_size: int = 128, lr: float = 2e-3, warmup: int = 100, pool: int = 120000, ramp: float = 0.3,
                    bf16: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``vision_model`` in place to name each kind's colour (see the module doc); returns its facts.

    The pool holds ``pool`` pictures, or ``steps * batch_size`` when fewer.
    AdamW (weight decay 0.01), linear warmup then cosine decay, gradients clipped at 1.0; with
    ``bf16`` the forward pass runs under CPU bfloat16 autocast (weights stay float32).
    """
    started = time.perf_counter()
    pool = min(pool, steps * batch_size)  # a short run needs no more pictures than it sees
    pixels, labels = vision_pool(max(2, pool), seed, image_processor)
    drawn = time.perf_counter() - started
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1) * 255
    width = vision_model.config.hidden_size
    head = torch.nn.Linear(width, len(world.SHAPES) * SLOT_CLASSES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    params = [*vision_model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    vision_model.train()
    losses: list[float] = []
    for step in range(steps):
        whole = min(1.0, step / max(1.0, ramp * steps))  # share of whole-world pictures in this batch
        idx = torch.randint(0, len(pixels) // 2, (batch_size,), generator=generator) * 2
        idx += (torch.rand(batch_size, generator=generator) >= whole).long()
        x = (pixels[idx].float() - mean) / std
        flip = torch.rand(batch_size, generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = head(vision_model(pixel_values=x).last_hidden_state.mean(1))
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, SLOT_CLASSES), labels[idx].view(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == steps - 1:
            log(f"vision step {step}: loss {np.mean(losses[-50:]):.4f}")
    vision_model.eval()
    return {"vision_steps": steps, "vision_batch_size": batch_size, "vision_lr": lr, "vision_pool": pool,
            "vision_ramp": ramp, "vision_bf16": bf16, "vision_first_loss": round(float(np.mean(losses[:50])), 4),
            "vision_final_loss": round(float(np.mean(losses[-50:])), 4), "vision_draw_seconds": round(drawn, 1),
            "vision_seconds": round(time.perf_counter() - started, 1)}
