"""The independent painter: grammar, geometry, colours, anti-aliasing, canvas sizes and determinism."""

from __future__ import annotations

import colorsys
import dataclasses
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from independent import painter

HUES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "blue": 240.0, "purple": 280.0}
SCENES = painter.scenes(300, "painter-tests")


def nearest_hue(rgb: tuple[int, int, int]) -> str:
    hue = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360
    return min(HUES, key=lambda name: min(abs(hue - HUES[name]), 360 - abs(hue - HUES[name])))


def alone(scene: painter.Scene, shape: painter.Shape) -> painter.Scene:
    return dataclasses.replace(scene, shapes=(shape,))


def mask(scene: painter.Scene, shape: painter.Shape, width: int, height: int, supersample: int = 4) -> np.ndarray:
    """Pixels that painting ``shape`` alone changes."""
    pixels = np.asarray(painter.paint(alone(scene, shape), width, height, supersample=supersample))
    return (pixels != scene.background_rgb).any(axis=2)


def test_captions_and_questions_follow_the_grammar() -> None:
    phrase = r"a (red|green|blue|yellow) (circle|square|triangle)"
    for scene in SCENES:
        kinds = scene.kinds()
        assert 1 <= len(kinds) <= 3 and list(kinds) == sorted(set(kinds), key=painter.KINDS.index)
        assert re.fullmatch(rf"{phrase}( and {phrase})*", painter.caption(scene))
        assert painter.caption(scene) == " and ".join(f"a {scene.colour_of(k)} {k}" for k in kinds)
        expected = [(f"what color is the {k}?", scene.colour_of(k)) for k in kinds]
        expected.append(("how many shapes?", ["one", "two", "three"][len(kinds) - 1]))
        expected += [(f"is there a {k}?", "yes" if k in kinds else "no") for k in ("circle", "square", "triangle")]
        assert painter.questions(scene) == expected
    assert {len(s.shapes) for s in SCENES} == {1, 2, 3}
    assert {s.background for s in SCENES} == {"white", "gray", "dark"}


def test_a_hand_built_scene() -> None:
    circle = painter.Shape("circle", "yellow", (250, 240, 10), 0.3, 0.3, 0.3)
    triangle = painter.Shape("triangle", "blue", (20, 40, 200), 0.7, 0.7, 0.3)
    scene = painter.Scene((circle, triangle), "white", (245, 246, 244))
    assert painter.caption(scene) == "a yellow circle and a blue triangle"
    assert painter.questions(scene) == [
        ("what color is the circle?", "yellow"), ("what color is the triangle?", "blue"), ("how many shapes?", "two"),
        ("is there a circle?", "yes"), ("is there a square?", "no"), ("is there a triangle?", "yes"),
    ]
    assert scene.colour_of("square") is None and scene.colour_of("triangle") == "blue"


@pytest.mark.parametrize("width,height", [(64, 64), (37, 53), (53, 37)])
def test_shapes_lie_inside_the_canvas_and_apart(width: int, height: int) -> None:
    for scene in SCENES[:120]:
        masks = [mask(scene, shape, width, height) for shape in scene.shapes]
        for m in masks:
            assert m.any() and not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        for a, b in itertools.combinations(masks, 2):  # a pixel of gap at least, even after dilation
            p = np.pad(a, 1)
            grown = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
            assert not (grown & b).any()


def test_centre_pixels_carry_the_shape_colour_and_its_hue() -> None:
    for scene in SCENES:
        pixels = np.asarray(painter.paint(scene))
        for shape in scene.shapes:
            assert tuple(pixels[int(shape.cy * 64), int(shape.cx * 64)]) == shape.rgb
            assert nearest_hue(shape.rgb) == shape.colour
            assert np.linalg.norm(np.subtract(shape.rgb, scene.background_rgb)) >= painter.MIN_CONTRAST
    shades = {shape.rgb for scene in SCENES for shape in scene.shapes}
    assert len(shades) > 100  # jittered, many shades per name


def test_every_shade_survives_jitter_on_every_background() -> None:
    jitter = 8 * 3**0.5
    for name, shades in painter.SHADES.items():
        assert all(nearest_hue(rgb) == name for rgb in shades)
        for low, high in painter.BACKGROUNDS.values():
            for level in (low - 4, high + 4):
                far = [c for c in shades if np.linalg.norm(np.subtract(c, level)) >= painter.MIN_CONTRAST + jitter]
                assert len(far) >= 2


def test_supersampling_anti_aliases_edges() -> None:
    scene = next(s for s in SCENES if len(s.shapes) == 3)
    palette = {scene.background_rgb, *(shape.rgb for shape in scene.shapes)}

    def blended(supersample: int) -> int:
        pixels = np.asarray(painter.paint(scene, supersample=supersample)).reshape(-1, 3)
        return sum(tuple(p) not in palette for p in pixels)

    assert blended(1) == 0
    assert blended(4) > 30


def test_sizes_vary_over_the_range_and_match_the_paint() -> None:
    sizes = [shape.size for scene in SCENES for shape in scene.shapes]
    low, high = painter.SIZE_RANGE
    assert low <= min(sizes) < low + 0.03 and high - 0.05 < max(sizes) <= high
    for scene in SCENES[:60]:
        for shape in scene.shapes:
            cols = np.flatnonzero(mask(scene, shape, 64, 64).any(axis=0))
            assert shape.size * 64 - 1 <= len(cols) <= shape.size * 64 + 2


def test_shape_forms() -> None:
    """Squares are filled axis-aligned boxes, triangles point up, circles fill pi/4 of their box."""
    for scene in SCENES[:60]:
        for shape in scene.shapes:
            m = mask(scene, shape, 128, 128, supersample=1)
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            box = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            if shape.kind == "square":
                assert box.all()
            elif shape.kind == "triangle":
                assert box[0].sum() <= 2 and box[-1].sum() >= len(cols) - 1
            else:
                assert abs(box.mean() - np.pi / 4) < 0.06


@pytest.mark.parametrize("width,height", [(37, 53), (53, 37), (256, 256), (64, 64)])
def test_circles_are_round_on_any_canvas(width: int, height: int) -> None:
    with_circle = [s for s in SCENES if "circle" in s.kinds()][:20]
    for scene in with_circle:
        circle = scene.shapes[0]
        m = mask(scene, circle, width, height)
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        assert abs(len(rows) - len(cols)) <= 1
        assert abs(len(cols) - circle.size * min(width, height)) <= 2
    assert painter.paint(with_circle[0], width, height).size == (width, height)


def test_purple_only_when_asked() -> None:
    assert all(shape.colour != "purple" for scene in SCENES for shape in scene.shapes)
    purple = painter.scenes(50, 1, palette=("purple",))
    for scene in purple:
        pixels = np.asarray(painter.paint(scene))
        for shape in scene.shapes:
            centre = pixels[int(shape.cy * 64), int(shape.cx * 64)]
            assert shape.colour == "purple" and nearest_hue(tuple(centre)) == "purple"
    with pytest.raises(ValueError):
        painter.scenes(1, 0, palette=("orange",))


def test_keep_filters_scenes() -> None:
    three = painter.scenes(10, "k", keep=lambda s: len(s.shapes) == 3)
    assert len(three) == 10 and all(len(s.shapes) == 3 for s in three)
    with pytest.raises(ValueError):
        painter.scenes(1, 0, keep=lambda s: False)


def test_same_seed_same_images() -> None:
    assert painter.scenes(20, "x") == painter.scenes(20, "x") != painter.scenes(20, "y")
    scene = SCENES[0]
    a, b = painter.paint(scene, noise=6, seed=3), painter.paint(scene, noise=6, seed=3)
    assert a.tobytes() == b.tobytes() != painter.paint(scene, noise=6, seed=4).tobytes()
    clean = np.asarray(painter.paint(scene), dtype=float)
    assert 3 < np.abs(np.asarray(a, dtype=float) - clean).mean() < 8


def test_jpeg_round_trip() -> None:
    image = painter.paint(SCENES[1])
    decoded = painter.jpeg(image, 75)
    assert decoded.mode == "RGB" and decoded.size == image.size
    assert decoded.tobytes() != image.tobytes()
    assert np.abs(np.asarray(decoded, dtype=float) - np.asarray(image, dtype=float)).mean() < 8


def test_the_painter_never_touches_the_project_generator() -> None:
    folder = Path(painter.__file__).parent
    for source in folder.glob("*.py"):
        text = source.read_text()
        assert "demo.world" not in text and "blip2plugins" not in text
