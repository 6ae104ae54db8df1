"""An example blip2plugins plugin: a model preset and a ``shapes:`` image source.

* ``demo-greedy-short``: the bundled demo model with short greedy captions by default.
* ``shapes:red-circle,blue-square``: draws a scene of up to three coloured shapes, in the style
  of the demo model's training data, so ``blip2 caption shapes:red-circle`` needs no image file.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from PIL import Image, ImageDraw

from blip2plugins import ImageError, ImageLimits, ImageSource, ModelPreset, hookimpl
from blip2plugins.presets import DEMO

SCHEME = "shapes"
CANVAS = 64
SIZE = 22
BACKGROUND = (245, 245, 245)
COLOURS = {"red": (255, 0, 0), "yellow": (255, 238, 0), "green": (0, 255, 9), "blue": (0, 51, 255)}
KINDS = ("circle", "square", "triangle")
#: Top-left corners of the first, second and third shape; the boxes never overlap.
CORNERS = ((6, 6), (36, 10), (18, 38))

GREEDY_SHORT = dataclasses.replace(
    DEMO,
    name="demo-greedy-short",
    description="The demo model with short greedy captions (example plugin)",
    aliases=(),
    defaults={"num_beams": 1, "do_sample": False, "max_new_tokens": 12},
)


def parse(ref: str) -> list[tuple[str, str]]:
    """``"shapes:red-circle,blue-square"`` -> ``[("red", "circle"), ("blue", "square")]``; ValueError if bad."""
    items = [item.strip().lower() for item in ref.partition(":")[2].split(",") if item.strip()]
    if not 1 <= len(items) <= len(CORNERS):
        raise ValueError(f"give 1 to {len(CORNERS)} shapes, like {SCHEME}:red-circle,blue-square")
    shapes = []
    for item in items:
        colour, _, kind = item.partition("-")
        if colour not in COLOURS or kind not in KINDS:
            raise ValueError(f"{item!r} is not COLOUR-SHAPE with COLOUR in {', '.join(COLOURS)} "
                             f"and SHAPE in {', '.join(KINDS)}")
        shapes.append((colour, kind))
    return shapes


def render(shapes: list[tuple[str, str]]) -> Image.Image:
    """Draw ``(colour, kind)`` shapes on a light background, as a 64x64 RGB image."""
    image = Image.new("RGB", (CANVAS, CANVAS), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for (colour, kind), (x, y) in zip(shapes, CORNERS):
        box = (x, y, x + SIZE - 1, y + SIZE - 1)
        fill = COLOURS[colour]
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x + (SIZE - 1) / 2, y), (box[2], box[3]), (x, box[3])], fill=fill)
    return image


def load_shapes(ref: str, limits: ImageLimits) -> Image.Image:
    """The image source's loader: parse ``ref`` and draw it (the core then checks it like any image)."""
    try:
        return render(parse(ref))
    except ValueError as exc:
        raise ImageError(ref, str(exc)) from None


@hookimpl
def register_models(register: Callable[[ModelPreset], None]) -> None:
    register(GREEDY_SHORT)


@hookimpl
def register_image_sources(register: Callable[[ImageSource], None]) -> None:
    register(ImageSource(name="example-shapes", scheme=SCHEME, load=load_shapes))
