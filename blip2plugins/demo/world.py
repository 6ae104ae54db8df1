"""A seeded world of simple scenes: 1 to 3 coloured shapes on a plain background, drawn with Pillow.

Each shape kind (circle, square, triangle) appears at most once. Colours are sampled as hues in a
band around each basic colour (red, yellow, green, blue) with gaps between the bands, and named by
the nearest basic colour, so names are unambiguous while the vision side still sees many hues.
The purple band (around 285 degrees) is never sampled by default: ask for it explicitly with
``palette=("purple",)`` or ``make_scene({"circle": "purple"})`` to draw an unseen colour.

    >>> import random
    >>> scene = random_scene(random.Random(0))
    >>> image, text, qa = render(scene), caption(scene), questions(scene)
"""

from __future__ import annotations

import colorsys
import itertools
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from PIL import Image, ImageDraw

CANVAS = 64
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")  # also the order shapes are listed in
BASIC_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: Hue (degrees) of each basic colour; sampled hues are named by the nearest of these.
BASIC_HUES: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0}
#: ``(centre, half_width)`` in degrees of the hues sampled for each colour. Purple is held out.
HUE_BANDS: dict[str, tuple[float, float]] = {
    "red": (0.0, 14.0), "yellow": (56.0, 8.0), "green": (122.0, 22.0), "blue": (228.0, 22.0),
    "purple": (285.0, 10.0),
}
UNSEEN_COLOURS: tuple[str, ...] = ("purple",)
BACKGROUNDS: dict[str, tuple[int, int]] = {"white": (235, 255), "gray": (110, 145), "dark": (15, 45)}
NUMBERS: tuple[str, ...] = ("one", "two", "three")
SATURATION = (0.75, 1.0)
VALUE = (0.8, 1.0)
#: Side of a shape's bounding box in pixels (low, high). One fixed size: with varying sizes the tiny
#: ViT learned shapes far more slowly (circle / square / triangle also differ in area then).
SIZE = (20, 20)


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
    """Shapes (in the fixed order of :data:`SHAPES`) on a uniform background of grey ``level``."""

    shapes: tuple[Shape, ...]
    background: str
    level: int

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
                for _ in range(50):
                    x, y = rng.randint(2, CANVAS - size - 2), rng.randint(2, CANVAS - size - 2)
                    if all(x + size + 3 <= bx or bx + bs + 3 <= x or y + size + 3 <= by or by + bs + 3 <= y
                           for bx, by, bs in boxes):
                        boxes.append((x, y, size))
                        break
                else:
                    break
            if len(boxes) == len(sizes):
                return [(x, y) for x, y, _ in boxes]
        sizes[:] = [max(4, size - 1) for size in sizes]


def make_scene(colours: Mapping[str, str], *, background: str = "white", rng: random.Random | None = None) -> Scene:
    """A scene with the given ``{kind: colour}`` shapes, e.g. ``make_scene({"circle": "purple"})``.

    Any colour of :data:`HUE_BANDS` is allowed. Without ``rng`` the hue is the band centre, colour
    fully saturated, the background level mid-range and the placement seeded from the arguments.
    """
    kinds = [k for k in SHAPES if k in colours]
    unknown = set(colours) - set(SHAPES)
    if unknown or not kinds:
        raise ValueError(f"shapes must be 1 to 3 of {SHAPES}, got {sorted(colours)}")
    place_rng = rng or random.Random(repr(sorted(colours.items())) + background)
    sizes = [place_rng.randint(*SIZE) for _ in kinds]
    corners = _place(sizes, place_rng)
    shapes = []
    for kind, size, (x, y) in zip(kinds, sizes, corners):
        colour = colours[kind]
        if rng is None:
            hue, sat, val = HUE_BANDS[colour][0] % 360.0, 1.0, 1.0
        else:
            hue, sat, val = sample_hue(colour, rng), rng.uniform(*SATURATION), rng.uniform(*VALUE)
        shapes.append(Shape(kind, colour, hue, sat, val, x, y, size))
    lo, hi = BACKGROUNDS[background]
    level = rng.randint(lo, hi) if rng else (lo + hi) // 2
    return Scene(tuple(shapes), background, level)


def random_scene(rng: random.Random, *, palette: Sequence[str] = BASIC_COLOURS) -> Scene:
    """A random scene: 1 to 3 distinct shape kinds, colours drawn from ``palette``, a random background."""
    n = rng.randint(1, len(SHAPES))
    kinds = rng.sample(SHAPES, n)
    colours = {kind: rng.choice(list(palette)) for kind in kinds}
    background = rng.choice(list(BACKGROUNDS))
    return make_scene(colours, background=background, rng=rng)


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image."""
    image = Image.new("RGB", (CANVAS, CANVAS), (scene.level,) * 3)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        box = (s.x, s.y, s.x + s.size - 1, s.y + s.size - 1)
        if s.kind == "circle":
            draw.ellipse(box, fill=s.rgb)
        elif s.kind == "square":
            draw.rectangle(box, fill=s.rgb)
        else:
            draw.polygon([(s.x + (s.size - 1) / 2, s.y), (box[2], box[3]), (s.x, box[3])], fill=s.rgb)
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
