"""Fine-tuning scenarios on the demo world, as a labeling team would meet them.

* **vocabulary**: annotators call the square a "tile". From a few accepted captions in the team's
  words (plus ordinary ones they accepted unchanged), the model should caption in those words.
* **purple**: a colour the demo model never saw. From a few accepted captions of purple scenes
  (plus replayed ordinary captions), the model should name it, and still caption the rest.

``write_labels`` writes such accepted captions as a JSONL dataset with PNG images (the format any
team exports). ``score`` measures a caption function on held-out pictures from any renderer, and
``measure`` does so on freshly drawn demo-world scenes of each kind.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from PIL import Image

from ..training.finetune import FinetuneConfig
from ..training.loop import TrainConfig
from . import world

TEAM_WORDS = {"square": "tile"}

#: Captions for a batch of images, e.g. the first of ``recipe.host_fns(host)``.
CaptionFn = Callable[[list[Image.Image]], list[str]]
#: A held-out picture and the caption expected of it.
Example = tuple[Image.Image, str]


#: The vision encoder's attention and MLP layers, for LoRA: a colour the encoder never saw needs it.
VISION_LORA = r"vision_model\.encoder\.layers\.\d+\.(self_attn\.qkv|mlp\.fc1|mlp\.fc2)"


def vocabulary_config(seed: int = 0) -> FinetuneConfig:
    """The recipe for the vocabulary scenario: LoRA on the language model's attention, plus the
    token rows of the words the labels use and the model never says (here "tile"); random flips,
    since a caption lists shapes in a fixed order wherever they are."""
    return FinetuneConfig(TrainConfig(method="lora", steps=300, batch_size=16, lr=1e-3, warmup=20, seed=seed,
                                      log_every=25, progress=False, augment=("hflip",)), eval_split=0.1)


def purple_config(seed: int = 0) -> FinetuneConfig:
    """The recipe for the purple scenario: LoRA on the language model and the Q-Former's query and
    value projections, the language projection trained whole, plus the token rows of "purple"."""
    return FinetuneConfig(TrainConfig(method="lora", steps=1200, batch_size=16, lr=3e-3, warmup=50, seed=seed,
                                      log_every=50, progress=False, augment=("hflip",),
                                      lora_extra=(r"qformer\..*\.(query|value)", VISION_LORA),
                                      lora_modules_to_save=("language_projection",)), eval_split=0.1)


def in_team_words(shapes: Iterable[tuple[str, str]]) -> str:
    """The caption in the team's words of ``(kind, colour)`` pairs, in caption order: "a red circle and a blue tile"."""
    return " and ".join(f"a {colour} {TEAM_WORDS.get(kind, kind)}" for kind, colour in shapes)


def team_caption(scene: world.Scene) -> str:
    """The caption of a demo-world scene in the team's words."""
    return in_team_words((s.kind, s.colour) for s in scene.shapes)


def scenes(n: int, seed: str, *, palette: Iterable[str] = world.BASIC_COLOURS,
           keep: Callable[[world.Scene], bool] = lambda s: True) -> list[world.Scene]:
    """``n`` random scenes drawn from ``seed`` (a string, so each purpose gets its own stream) that ``keep`` accepts."""
    rng = random.Random(seed)
    palette = tuple(palette)
    out: list[world.Scene] = []
    while len(out) < n:
        scene = world.random_scene(rng, palette=palette)
        if keep(scene):
            out.append(scene)
    return out


#: The recipes as constants, for settings that name an object (``MODULE:ATTR``).
VOCABULARY_CONFIG = vocabulary_config()
PURPLE_CONFIG = purple_config()


def has(kind: str) -> Callable[[world.Scene], bool]:
    return lambda scene: scene.shape(kind) is not None


def has_colour(colour: str) -> Callable[[world.Scene], bool]:
    return lambda scene: any(s.colour == colour for s in scene.shapes)


def write_labels(folder: Path, labelled: list[tuple[world.Scene, str]], *, name: str = "labels.jsonl") -> Path:
    """Write the scenes as PNGs and ``{"image", "caption"}`` lines; returns the JSONL path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (scene, caption) in enumerate(labelled):
        image = f"images/{i:05d}.png"
        (folder / "images").mkdir(exist_ok=True)
        world.render(scene).save(folder / image)
        lines.append(json.dumps({"image": image, "caption": caption}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def vocabulary_labels(n_team: int = 32, n_plain: int = 32, *, seed: int = 0) -> list[tuple[world.Scene, str]]:
    """``n_team`` scenes with a square captioned in the team's words, ``n_plain`` without a square."""
    team = scenes(n_team, f"vocabulary-team:{seed}", keep=has("square"))
    plain = scenes(n_plain, f"vocabulary-plain:{seed}", keep=lambda s: s.shape("square") is None)
    return [(s, team_caption(s)) for s in team] + [(s, world.caption(s)) for s in plain]


def purple_labels(n_purple: int = 128, n_replay: int = 512, *, seed: int = 0) -> list[tuple[world.Scene, str]]:
    """``n_purple`` scenes with at least one purple shape, and ``n_replay`` ordinary scenes, all captioned."""
    palette = (*world.BASIC_COLOURS, "purple")
    purple = scenes(n_purple, f"purple:{seed}", palette=palette, keep=has_colour("purple"))
    replay = scenes(n_replay, f"purple-replay:{seed}")
    return [(s, world.caption(s)) for s in purple + replay]


def exact_match(caption: CaptionFn, examples: Sequence[Example]) -> float:
    """The fraction of pictures whose caption equals the expected one (case and final period ignored)."""
    got = caption([image for image, _ in examples])
    norm = lambda text: text.strip().lower().rstrip(".").strip()  # noqa: E731
    return sum(norm(g) == norm(e) for g, (_, e) in zip(got, examples)) / max(1, len(examples))


def score(caption: CaptionFn, held_out: Mapping[str, Sequence[Example]]) -> dict[str, float]:
    """Exact match of each named group of held-out pictures, e.g. ``{"team": [...], "plain": [...]}``."""
    return {name: exact_match(caption, examples) for name, examples in held_out.items()}


def measure(caption: CaptionFn, scenario: str, *, n: int = 200, seed: int = 1000) -> dict[str, float]:
    """Held-out exact match for ``scenario`` ("vocabulary" or "purple") on fresh demo-world scenes.

    vocabulary: ``team`` (scenes with a square, expected in the team's words) and ``plain`` (without);
    purple: ``purple`` (scenes with a purple shape) and ``ordinary``.
    """
    if scenario == "vocabulary":
        team = scenes(n, f"held-out-team:{seed}", keep=has("square"))
        plain = scenes(n, f"held-out-plain:{seed}", keep=lambda s: s.shape("square") is None)
        groups = {"team": [(s, team_caption(s)) for s in team], "plain": [(s, world.caption(s)) for s in plain]}
    elif scenario == "purple":
        palette = (*world.BASIC_COLOURS, "purple")
        purple = scenes(n, f"held-out-purple:{seed}", palette=palette, keep=has_colour("purple"))
        ordinary = scenes(n, f"held-out-ordinary:{seed}")
        groups = {"purple": [(s, world.caption(s)) for s in purple],
                  "ordinary": [(s, world.caption(s)) for s in ordinary]}
    else:
        raise ValueError(f"unknown scenario {scenario!r}: expected 'vocabulary' or 'purple'")
    return score(caption, {name: [(world.render(s), text) for s, text in group] for name, group in groups.items()})
