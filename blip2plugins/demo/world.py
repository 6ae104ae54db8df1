"""A seeded world of simple scenes: 1 to 3 coloured shapes on a plain background, drawn with Pillow.

Each shape kind (circle, square, triangle) appears at most once, at any size from small to large,
anywhere on the canvas, never overlapping. Colours are shades a person still calls by their name:
a hue in a band around each basic colour (red, yellow, green, blue, with gaps between the bands,
named by the nearest basic colour) and that colour's range of saturation and value, dark and
washed-out shades included. Backgrounds are white, gray or dark tones with a slight tint. The purple
band (around 283 degrees) is never sampled by default: ask for it explicitly with
``palette=("purple",)`` or ``make_scene({"circle": "purple"})`` to draw an unseen colour.

:func:`render` draws a scene at any canvas size, with hard or anti-aliased edges; :func:`draw` draws
it as a random :class:`Look` (canvas size and aspect, edges, noise, JPEG) would, for training.

    >>> import random
    >>> scene = random_scene(random.Random(0))
    >>> image, text, qa = render(scene), caption(scene), questions(scene)
"""

from __future__ import annotations

import colorsys
import io
import itertools
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")  # also the order shapes are listed in
BASIC_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: Hue (degrees) of each basic colour; sampled hues are named by the nearest of these.
BASIC_HUES: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}
#: ``(centre, half_width)`` in degrees of the hues sampled for each colour. Purple is held out.
HUE_BANDS: dict[str, tuple[float, float]] = {
    "red": (0.0, 12.0), "yellow": (54.0, 8.0), "green": (125.0, 25.0), "blue": (225.0, 20.0),
    "purple": (283.0, 12.0),
}
#: Saturation and value (low, high) of each colour's shades: dark yellow turns olive and dull red
#: brown, so those stay brighter than dark greens and blues.
SATURATION: dict[str, tuple[float, float]] = {
    "red": (0.6, 1.0), "yellow": (0.55, 1.0), "green": (0.4, 1.0), "blue": (0.45, 1.0), "purple": (0.4, 1.0),
}
VALUE: dict[str, tuple[float, float]] = {
    "red": (0.45, 1.0), "yellow": (0.78, 1.0), "green": (0.35, 1.0), "blue": (0.4, 1.0), "purple": (0.45, 1.0),
}
UNSEEN_COLOURS: tuple[str, ...] = ("purple",)
BACKGROUNDS: dict[str, tuple[int, int]] = {"white": (225, 255), "gray": (100, 160), "dark": (5, 50)}
#: Largest per-channel offset of a background's tint.
TINT = 6
#: Least difference (largest over the RGB channels) between a shape's colour and its background.
MIN_CONTRAST = 60
NUMBERS: tuple[str, ...] = ("one", "two", "three")
#: Side of a shape's bounding box in pixels on the 64 px canvas (low, high).
SIZE = (9, 30)


@dataclass(frozen=True)
class Shape:
    """One shape: its kind, colour name and exact HSV colour, and its bounding box ``(x, y, size)``."""

    kind: str
    colour: str
    hue: float
    saturation: float
    value: float
    x: int
    y: int
    size: int

    @property
    def rgb(self) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb((self.hue % 360.0) / 360.0, self.saturation, self.value)
        return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True)
class Scene:
    """Shapes (in the fixed order of :data:`SHAPES`) on a uniform background of grey ``level``,
    tinted by ``tint`` (per-channel offsets)."""

    shapes: tuple[Shape, ...]
    background: str
    level: int
    tint: tuple[int, int, int] = (0, 0, 0)

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The background colour."""
        return tuple(min(255, max(0, self.level + t)) for t in self.tint)  # type: ignore[return-value]

    def shape(self, kind: str) -> Shape | None:
        """The shape of ``kind``, or ``None`` when the scene has none."""
        return next((s for s in self.shapes if s.kind == kind), None)


def colour_of_hue(hue: float) -> str:
    """The basic colour nearest to ``hue`` (degrees, circular distance)."""
    return min(BASIC_HUES, key=lambda c: abs((hue - BASIC_HUES[c] + 180.0) % 360.0 - 180.0))


def sample_hue(colour: str, rng: random.Random) -> float:
    """A hue in ``[0, 360)`` drawn uniformly from the band of ``colour``."""
    centre, half = HUE_BANDS[colour]
    return rng.uniform(centre - half, centre + half) % 360.0


def _place(sizes: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """Top-left corners for boxes of ``sizes`` that do not overlap (3 px apart, 2 px from the edge).

    Boxes that do not fit after a few tries are shrunk by a pixel (``sizes`` is updated in place).
    """
    while True:
        for _ in range(20):
            boxes: list[tuple[int, int, int]] = []
            for size in sizes:
                room = CANVAS - size - 3  # corners 2 .. CANVAS - size - 2
                for _ in range(50):
                    x, y = 2 + int(rng.random() * room), 2 + int(rng.random() * room)
                    if all(x + size + 3 <= bx or bx + bs + 3 <= x or y + size + 3 <= by or by + bs + 3 <= y
                           for bx, by, bs in boxes):
                        boxes.append((x, y, size))
                        break
                else:
                    break
            if len(boxes) == len(sizes):
                return [(x, y) for x, y, _ in boxes]
        sizes[:] = [max(4, size - 1) for size in sizes]


def make_scene(colours: Mapping[str, str], *, background: str = "white", rng: random.Random | None = None,
               size: tuple[int, int] = SIZE) -> Scene:
    """A scene with the given ``{kind: colour}`` shapes, e.g. ``make_scene({"circle": "purple"})``.

    Any colour of :data:`HUE_BANDS` is allowed. Shape sides are drawn from ``size`` (low, high). Without
    ``rng`` the sides are 20 px, the hue is the band centre, colour fully saturated, the background
    level mid-range and untinted, and the placement seeded from the arguments.
    """
    kinds = [k for k in SHAPES if k in colours]
    unknown = set(colours) - set(SHAPES)
    if unknown or not kinds:
        raise ValueError(f"shapes must be 1 to 3 of {SHAPES}, got {sorted(colours)}")
    place_rng = rng or random.Random(repr(sorted(colours.items())) + background)
    sizes = [place_rng.randint(*size) if rng else 20 for _ in kinds]
    corners = _place(sizes, place_rng)
    lo, hi = BACKGROUNDS[background]
    if rng is None:
        level, tint = (lo + hi) // 2, (0, 0, 0)
    else:
        level, tint = rng.randint(lo, hi), (rng.randint(-TINT, TINT), rng.randint(-TINT, TINT), rng.randint(-TINT, TINT))
    scene = Scene((), background, level, tint)
    shapes = []
    for kind, side, (x, y) in zip(kinds, sizes, corners):
        colour = colours[kind]
        if rng is None:
            shapes.append(Shape(kind, colour, HUE_BANDS[colour][0] % 360.0, 1.0, 1.0, x, y, side))
            continue
        for _ in range(100):
            shape = Shape(kind, colour, sample_hue(colour, rng), rng.uniform(*SATURATION[colour]),
                          rng.uniform(*VALUE[colour]), x, y, side)
            if contrast(shape.rgb, scene.rgb) >= MIN_CONTRAST:
                break
        shapes.append(shape)
    return Scene(tuple(shapes), background, level, tint)


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    """The largest per-channel difference of two colours."""
    return max(abs(x - y) for x, y in zip(a, b))


def random_scene(rng: random.Random, *, palette: Sequence[str] = BASIC_COLOURS, size: tuple[int, int] = SIZE) -> Scene:
    """A random scene: 1 to 3 distinct shape kinds, colours drawn from ``palette``, sides from
    ``size``, a random background."""
    n = rng.randint(1, len(SHAPES))
    kinds = rng.sample(SHAPES, n)
    colours = {kind: rng.choice(list(palette)) for kind in kinds}
    background = rng.choice(list(BACKGROUNDS))
    return make_scene(colours, background=background, rng=rng, size=size)


def render(scene: Scene, *, width: int = CANVAS, height: int = CANVAS, supersample: int = 1) -> Image.Image:
    """The scene as a ``width`` x ``height`` RGB image (default 64x64, hard edges).

    Positions scale with each side and shape sizes with the shorter one, so shapes stay round and
    square on any canvas, and still never overlap. ``supersample`` > 1 draws that many times larger
    and averages down: anti-aliased edges.
    """
    k = supersample
    sx, sy = width / CANVAS * k, height / CANVAS * k
    scale = min(sx, sy)
    image = Image.new("RGB", (width * k, height * k), scene.rgb)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        x, y, side = s.x * sx, s.y * sy, max(1.0, s.size * scale)
        box = (x, y, x + side - 1, y + side - 1)
        if s.kind == "circle":
            draw.ellipse(box, fill=s.rgb)
        elif s.kind == "square":
            draw.rectangle(box, fill=s.rgb)
        else:
            draw.polygon([(x + (side - 1) / 2, y), (box[2], box[3]), (x, box[3])], fill=s.rgb)
    return image.resize((width, height), Image.Resampling.BOX) if k > 1 else image


@dataclass(frozen=True)
class Look:
    """How one picture of a scene comes out: canvas size, edges, sensor noise and JPEG compression."""

    width: int = CANVAS
    height: int = CANVAS
    supersample: int = 1
    noise: float = 0.0  # standard deviation, in 0-255 levels
    jpeg: int | None = None  # quality, or None for none


def _canvas(rng: random.Random, sides: tuple[float, float], aspect: float, smallest: int) -> tuple[int, int]:
    """A canvas whose width is 2**uniform(``sides``) px and aspect 2**uniform(+-``aspect``), each side
    kept within ``smallest`` to 160 px."""
    width = round(2 ** rng.uniform(*sides))
    height = min(160, max(smallest, round(width * 2 ** rng.uniform(-aspect, aspect))))
    return min(160, max(smallest, width)), height


def _edges(rng: random.Random, width: int, height: int) -> int:
    """A supersampling factor: hard edges (1) or anti-aliased ones (2, or 4 on canvases up to 96 px)."""
    return rng.choice((1, 2, 4)) if max(width, height) <= 96 else rng.choice((1, 2))


def random_look(rng: random.Random) -> Look:
    """A look any camera or drawing program might give: half the time the 64 px square, otherwise
    a canvas of 28 to 160 px a side (aspect up to about 1.7); hard or anti-aliased edges; mild noise
    (30%); JPEG at quality 30-95 (35%)."""
    width = height = CANVAS
    if rng.random() < 0.5:
        width, height = _canvas(rng, (4.8, 7.3), 0.75, 28)
    supersample = _edges(rng, width, height)
    noise = rng.uniform(2.0, 10.0) if rng.random() < 0.3 else 0.0
    jpeg = rng.randint(30, 95) if rng.random() < 0.35 else None
    return Look(width, height, supersample, noise, jpeg)


def rough_look(rng: random.Random) -> Look:
    """A far worse picture than :func:`random_look` gives, still of the same scene: a canvas of 14 to
    160 px a side with aspect up to 4; hard or anti-aliased edges; strong noise (50%); JPEG at quality
    5-40 (60%). A few in training teach the model to be unsure where a picture hides its scene."""
    width, height = _canvas(rng, (3.8, 7.3), 2.0, 14)
    supersample = _edges(rng, width, height)
    noise = rng.uniform(10.0, 40.0) if rng.random() < 0.5 else 0.0
    jpeg = rng.randint(5, 40) if rng.random() < 0.6 else None
    return Look(width, height, supersample, noise, jpeg)


def training_look(rng: random.Random, key: str, rough: float) -> Look:
    """A :func:`rough_look` with probability ``rough`` (decided by a generator of its own, seeded from
    ``key``, so the other looks do not change with it), else a :func:`random_look`; both drawn from ``rng``."""
    return rough_look(rng) if random.Random(f"rough:{key}").random() < rough else random_look(rng)


def draw(scene: Scene, look: Look, *, seed: int = 0) -> Image.Image:
    """The scene as ``look`` shows it (the noise drawn from ``seed``)."""
    image = render(scene, width=look.width, height=look.height, supersample=look.supersample)
    if look.noise:
        noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(seed).normal(0.0, look.noise, (look.height, look.width, 3))
        image = Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8))
    if look.jpeg is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=look.jpeg)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image


def caption(scene: Scene) -> str:
    """E.g. ``"a red circle and a blue square"``: shapes in the order circle, square, triangle."""
    return " and ".join(f"a {s.colour} {s.kind}" for s in sorted(scene.shapes, key=lambda s: SHAPES.index(s.kind)))


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Every ``(question, answer)`` about the scene: the colour of each shape present, the count,
    and whether each kind is there."""
    present = [k for k in SHAPES if scene.shape(k)]
    qa = [(f"what color is the {k}?", scene.shape(k).colour) for k in present]  # type: ignore[union-attr]
    qa.append(("how many shapes?", NUMBERS[len(scene.shapes) - 1]))
    qa += [(f"is there a {k}?", "yes" if k in present else "no") for k in SHAPES]
    return qa


def question_kind(question: str) -> str:
    """``"colour"``, ``"count"`` or ``"presence"``."""
    return "colour" if question.startswith("what color") else "count" if question.startswith("how many") else "presence"


def all_texts(colours: Iterable[str] = BASIC_COLOURS) -> tuple[list[str], list[tuple[str, str]]]:
    """Every possible caption and ``(question, answer)`` pair for scenes coloured from ``colours``."""
    colours = list(colours)
    captions = []
    for n in range(1, len(SHAPES) + 1):
        for kinds in itertools.combinations(SHAPES, n):
            for cols in itertools.product(colours, repeat=n):
                captions.append(" and ".join(f"a {c} {k}" for c, k in zip(cols, kinds)))
    qa = [(f"what color is the {k}?", c) for k in SHAPES for c in colours]
    qa += [("how many shapes?", n) for n in NUMBERS]
    qa += [(f"is there a {k}?", a) for k in SHAPES for a in ("yes", "no")]
    return captions, qa


def corpus(render_question: Callable[[str], str] = str, *, unseen: bool = True) -> list[str]:
    """Text for training the tokenizer: every caption, ``"<prompt> <answer>"`` line and bare answer.

    ``render_question`` turns a question into the model's prompt (e.g. ``OPT.render_question``).
    With ``unseen``, the held-out colour words are added to the vocabulary (one line each, never in
    a caption or answer), so a later fine-tune can teach them as single tokens.
    """
    captions, qa = all_texts()
    lines = captions + [f"{render_question(q)} {a}" for q, a in qa] + sorted({a for _, a in qa})
    if unseen:
        lines += [f"a {c} {k}" for c in UNSEEN_COLOURS for k in SHAPES] + list(UNSEEN_COLOURS)
    return lines
