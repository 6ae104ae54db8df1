"""A second painter of the shape world, written from its description alone.

Shapes are analytic regions rasterised in numpy on a ``k x k`` subpixel grid and averaged down, so edges are
anti-aliased. Centres are fractions of the canvas width and height; sizes (bounding-box width) are fractions of
the shorter side, so shapes stay isotropic at any aspect ratio. Placement is solved on the unit square: stretching
one axis only pulls boxes further apart, so a scene valid there is valid on every canvas.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

KINDS = ("circle", "square", "triangle")
BASIC = ("red", "green", "blue", "yellow")
COUNTS = {1: "one", 2: "two", 3: "three"}
BACKGROUNDS = {"white": (232, 252), "gray": (105, 150), "dark": (12, 40)}  # base grey level range
SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {  # named shades (CSS/X11 or near), none borderline
    "red": ((255, 0, 0), (220, 20, 60), (178, 34, 34), (200, 30, 30), (180, 45, 50), (139, 0, 0), (235, 50, 40)),
    "green": ((0, 128, 0), (34, 139, 34), (50, 205, 50), (46, 139, 87), (0, 100, 0), (70, 160, 70), (0, 220, 0)),
    "blue": ((0, 0, 255), (65, 105, 225), (30, 144, 255), (0, 0, 205), (25, 25, 150), (40, 60, 170), (70, 90, 200)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 230, 40), (230, 210, 20), (250, 235, 90), (245, 225, 60)),
    "purple": ((128, 0, 128), (153, 50, 204), (138, 43, 226), (148, 0, 211), (160, 100, 220), (110, 30, 140)),
}
MIN_CONTRAST = 110.0  # Euclidean RGB distance between any shape colour and its background
SIZE_RANGE = (0.16, 0.44)  # bounding size, fraction of the shorter side
MARGIN, GAP = 0.03, 0.05  # to the canvas edge, between bounding boxes (shorter-side units)
TRIANGLE_ASPECT = 3**0.5 / 2  # equilateral: height / base


def half_extents(kind: str, size: float) -> tuple[float, float]:
    """Half width and half height of a shape's bounding box, in the units of ``size``."""
    return size / 2, size / 2 * (TRIANGLE_ASPECT if kind == "triangle" else 1.0)


@dataclass(frozen=True)
class Shape:
    """One shape: centre (cx, cy) as fractions of width and height; size = bounding width / shorter side."""

    kind: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    """Shapes in canonical order (circle, square, triangle) on a background."""

    shapes: tuple[Shape, ...]
    background: str
    background_rgb: tuple[int, int, int]

    def kinds(self) -> tuple[str, ...]:
        return tuple(shape.kind for shape in self.shapes)

    def colour_of(self, kind: str) -> str | None:
        return next((shape.colour for shape in self.shapes if shape.kind == kind), None)


def _rgb(values: Sequence[int]) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v)) for v in values)
    return r, g, b


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def _colour(rng: random.Random, name: str, background: tuple[int, int, int]) -> tuple[int, int, int]:
    """A jittered shade of ``name`` that stands out from ``background`` (redrawn until it does)."""
    while True:
        base = rng.choice(SHADES[name])
        rgb = _rgb([c + rng.randint(-8, 8) for c in base])
        if _distance(rgb, background) >= MIN_CONTRAST:
            return rgb


def _place(rng: random.Random, sized: list[tuple[str, float]]) -> list[tuple[float, float]] | None:
    """Centres for the (kind, size) pairs with boxes inside the unit square and apart, or None."""
    boxes: list[tuple[float, float, float, float]] = []
    for kind, size in sized:
        hw, hh = half_extents(kind, size)
        for _ in range(60):
            cx, cy = rng.uniform(MARGIN + hw, 1 - MARGIN - hw), rng.uniform(MARGIN + hh, 1 - MARGIN - hh)
            if all(abs(cx - x) >= hw + w + GAP or abs(cy - y) >= hh + h + GAP for x, y, w, h in boxes):
                boxes.append((cx, cy, hw, hh))
                break
        else:
            return None
    return [(x, y) for x, y, _, _ in boxes]


def random_scene(rng: random.Random, *, palette: Sequence[str] = BASIC) -> Scene:
    """One random scene with colours drawn from ``palette``."""
    if not palette or set(palette) - set(SHADES):
        raise ValueError(f"bad palette {list(palette)!r}")
    kinds = sorted(rng.sample(KINDS, rng.randint(1, 3)), key=KINDS.index)
    background = rng.choice(sorted(BACKGROUNDS))
    level = rng.randint(*BACKGROUNDS[background])
    background_rgb = _rgb([level + rng.randint(-4, 4) for _ in range(3)])
    while True:  # largest first: it is the hardest to fit
        sized = sorted(((kind, rng.uniform(*SIZE_RANGE)) for kind in kinds), key=lambda ks: -ks[1])
        centres = _place(rng, sized)
        if centres is not None:
            break
    shapes: list[Shape] = []
    for (kind, size), (cx, cy) in zip(sized, centres):
        colour = rng.choice(palette)
        shapes.append(Shape(kind, colour, _colour(rng, colour, background_rgb), cx, cy, size))
    shapes.sort(key=lambda shape: KINDS.index(shape.kind))
    return Scene(tuple(shapes), background, background_rgb)


def scenes(n: int, seed: int | str, *, palette: Sequence[str] = BASIC,
           keep: Callable[[Scene], bool] = lambda s: True) -> list[Scene]:
    """``n`` scenes that pass ``keep``, deterministic from ``seed``."""
    rng, out = random.Random(seed), list[Scene]()
    for _ in range(1000 * max(n, 1)):
        if len(out) == n:
            return out
        scene = random_scene(rng, palette=palette)
        if keep(scene):
            out.append(scene)
    raise ValueError(f"keep accepted only {len(out)} of the scenes drawn, {n} were asked for")


def _coverage(shape: Shape, width: int, height: int, k: int) -> tuple[np.ndarray, slice, slice]:
    """Coverage in [0, 1] of the pixels (rows, cols) around ``shape``, from k x k samples per pixel."""
    side = min(width, height)
    px, py = shape.cx * width, shape.cy * height
    hw, hh = half_extents(shape.kind, shape.size * side)
    rows = slice(max(0, int(py - hh) - 1), min(height, int(py + hh) + 2))
    cols = slice(max(0, int(px - hw) - 1), min(width, int(px + hw) + 2))
    sub = (np.arange(k) + 0.5) / k
    y = (np.arange(rows.start, rows.stop)[:, None] + sub).reshape(-1, 1) - py
    x = (np.arange(cols.start, cols.stop)[:, None] + sub).reshape(1, -1) - px
    if shape.kind == "circle":
        inside = x**2 + y**2 <= hw**2
    elif shape.kind == "square":
        inside = (np.abs(x) <= hw) & (np.abs(y) <= hh)
    else:  # apex up at y = -hh, base at y = +hh; half width grows linearly from 0 to hw
        inside = (y <= hh) & (np.abs(x) <= hw * (y + hh) / (2 * hh))
    cover = inside.reshape(rows.stop - rows.start, k, cols.stop - cols.start, k).mean(axis=(1, 3))
    return cover, rows, cols


def paint(scene: Scene, width: int = 64, height: int = 64, *, supersample: int = 4, noise: float = 0.0,
          seed: int = 0) -> Image.Image:
    """The scene as a ``width`` x ``height`` RGB image; ``noise`` is a Gaussian sigma in 0..255 units."""
    image = np.empty((height, width, 3), dtype=float)
    image[:] = scene.background_rgb
    for shape in scene.shapes:
        cover, rows, cols = _coverage(shape, width, height, supersample)
        patch = image[rows, cols]
        image[rows, cols] = patch + cover[..., None] * (np.asarray(shape.rgb, dtype=float) - patch)
    if noise:
        image += np.random.default_rng(seed).normal(0.0, noise, image.shape)
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` after a round trip through JPEG at ``quality``, in memory."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


#: The looks the demo model must hold its bars at: 64x64, after JPEG at quality 70, 37x53 and 256x256.
LOOKS: dict[str, Callable[[Scene], Image.Image]] = {
    "64x64": lambda scene: paint(scene),
    "JPEG q70": lambda scene: jpeg(paint(scene), 70),
    "37x53": lambda scene: paint(scene, 37, 53),
    "256x256": lambda scene: paint(scene, 256, 256),
}


def caption(scene: Scene) -> str:
    return " and ".join(f"a {shape.colour} {shape.kind}" for shape in scene.shapes)


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Colour questions of present kinds, the count, then presence of each kind (all canonical order)."""
    asked = [(f"what color is the {shape.kind}?", shape.colour) for shape in scene.shapes]
    asked.append(("how many shapes?", COUNTS[len(scene.shapes)]))
    return asked + [(f"is there a {kind}?", "yes" if kind in scene.kinds() else "no") for kind in KINDS]
