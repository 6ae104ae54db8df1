"""The recipe of the bundled demo model, and the evaluation that measures it.

``train_demo(out_dir, seed=..., steps=...)`` trains a byte-level BPE tokenizer on the world's text,
builds a tiny BLIP-2 (OPT) from scratch, trains it on captions and questions jointly with
:mod:`blip2plugins.training`, measures it on freshly generated scenes (another seed) and saves model,
processor and a model card to ``out_dir``. ``evaluate`` measures any captioner/answerer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import random
import string
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from PIL import Image

from ..building import ModelSpec, build_model, build_processor, train_tokenizer
from ..errors import Blip2Error
from ..families import OPT, Family
from ..host import Host
from ..prompts import chat_text
from ..training import Example, TrainConfig, count_parameters, train
from . import world
from .vision_pretrain import draw_pool, pretrain_vision

CaptionFn = Callable[[list[Image.Image]], list[str]]
AskFn = Callable[[list[Image.Image], list[str]], list[str]]

#: The demo model's sizes: 64 px input, patch 8; a vision encoder of width 96 and 3 layers; Q-Former
#: and OPT of width 64 and 2 layers; 4 heads, 8 queries, a 160-token context.
DEMO_SPEC = ModelSpec(image_size=64, patch_size=8, hidden=64, layers=2, heads=4, num_query_tokens=8,
                      max_positions=160, vision_layers=3, vision_hidden=96)
DEMO_FAMILY = OPT
DEFAULT_SEED = 0
DEFAULT_STEPS = 2700
#: Weight init of the vision tower, Q-Former and projection (the configs' 0.02 is tuned for width 768;
#: at width 64 it leaves attention uniform for a long time).
INIT_STD = 0.1
EVAL_SEED_OFFSET = 1000
#: Steps of the vision encoder's pretraining (stage 1, :mod:`.vision_pretrain`).
DEFAULT_VISION_STEPS = 4500
#: Stage 1's pictures (half plain, half in random looks), drawn up front.
DEFAULT_VISION_POOL = 250000


#: System texts a chat may start with (ChatBlip2 sends a system message as a preamble): common ones,
#: and random ones made of :data:`FILLER` words, so the model learns to answer past any preamble.
SYSTEM_TEXTS: tuple[str, ...] = (
    "You are a helpful assistant.", "You are a helpful assistant that answers questions about images.",
    "Answer the question about the image.", "Answer in one word.", "Be brief.",
    "You are a vision assistant. Look at the picture and answer briefly.",
    "Describe what you see when asked.", "You see one image. Answer questions about it.",
)
FILLER: tuple[str, ...] = tuple(
    "you are an the a helpful assistant image picture photo answer answers question questions short brief "
    "please look at this that what see in on of to and be concise agent tool user task one word careful".split())
#: Where the model cards hold the figures measured on the tests' independent painter
#: (``benchmarks/demo_generalization.py --card`` writes them).
CARD_MARKERS = ("<!-- independent painter -->", "<!-- end independent painter -->")
#: Most past turns of a training conversation (with the question asked: 5 turns).
MAX_PAST_TURNS = 4
#: Longest random system text. With it the longest training chats reach the end of the prompt room the
#: host leaves beside the default 30 new tokens, and still fit the context with their answer.
MAX_SYSTEM_CHARS = 64
#: Stage 2's pictures drawn up front; each is shown with different texts as the examples cycle through them.
DEFAULT_POOL = 80000
#: Share of stage 2's pictures drawn in a :func:`world.rough_look`: on them the model learns to be unsure,
#: so that its score falls where a picture hides its scene.
ROUGH_LOOKS = 0.15


class Picture(NamedTuple):
    """A scene as the evaluation sees it: an image, its caption and its ``(question, answer)`` pairs."""

    image: Image.Image
    caption: str
    questions: list[tuple[str, str]]


def random_system(rng: random.Random) -> str:
    """A system text: one of :data:`SYSTEM_TEXTS` (30%), or 2 to 30 words, each a :data:`FILLER` word
    or 1 to 9 random letters (words the tokenizer splits into pieces, as it does most of a user's),
    up to :data:`MAX_SYSTEM_CHARS` characters."""
    if rng.random() < 0.3:
        return rng.choice(SYSTEM_TEXTS)
    words: list[str] = []
    for _ in range(rng.randint(2, 30)):
        word = (rng.choice(FILLER) if rng.random() < 0.5
                else "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9))))
        if len(" ".join([*words, word])) + 1 > MAX_SYSTEM_CHARS:
            break
        words.append(word)
    return " ".join(words).capitalize() + "."


class SceneExamples(Sequence[Example]):
    """``n_scenes * (1 + questions_per_scene)`` examples, each of its own scene, drawn lazily.

    Everything is seeded from ``seed`` and the index, so any example can be drawn in any order, and
    consecutive examples are already in random order. An example is a caption, or ``questions_per_scene``
    times as often a question; with ``chat``, 60% of the questions come after 1 to
    :data:`MAX_PAST_TURNS` past turns about the same scene (the most half the time), and half of all
    questions after a system text (:func:`random_system`), as ChatBlip2 renders one. Question kinds
    (colour, count, presence) are equally likely. With ``looks`` each example draws its scene in a
    random :func:`world.training_look`, :data:`ROUGH_LOOKS` of them rough (else plain 64 px, hard edges).

    :meth:`drawn` draws the first scenes up front (``pictures``, already resized by the processor, and
    their ``scenes``); example ``i`` then shows scene ``i % len(pictures)`` as drawn there, with a text of its own.
    """

    def __init__(self, n_scenes: int, seed: int, *, family: Family = DEMO_FAMILY, questions_per_scene: int = 1,
                 palette: Sequence[str] = world.BASIC_COLOURS, looks: bool = True, chat: bool = True) -> None:
        self.n_scenes, self.seed, self.family = n_scenes, seed, family
        self.per_scene = 1 + questions_per_scene
        self.palette = tuple(palette)
        self.looks, self.chat = looks, chat
        self.pictures: torch.Tensor | None = None
        self.scenes: list[world.Scene] = []

    def __len__(self) -> int:
        return self.n_scenes * self.per_scene

    def scene(self, index: int) -> world.Scene:
        return world.random_scene(random.Random(f"train:{self.seed}:{index}"), palette=self.palette)

    def image(self, scene: world.Scene, i: int) -> Image.Image:
        """Example ``i``'s picture of ``scene``."""
        if not self.looks:
            return world.render(scene)
        rng = random.Random(f"look:{self.seed}:{i}")
        look = world.training_look(rng, f"{self.seed}:{i}", ROUGH_LOOKS)
        return world.draw(scene, look, seed=self.seed * 1_000_003 + i)

    def picture(self, i: int) -> tuple[Image.Image, world.Scene]:
        """Example ``i``'s scene drawn in its look, and the scene."""
        scene = self.scene(i)
        return self.image(scene, i), scene

    def drawn(self, n: int, image_processor: Any, *, workers: int = 2) -> SceneExamples:
        """These examples on the first ``n`` scenes' pictures, drawn up front by ``workers`` processes
        and resized by ``image_processor`` (which then leaves them as they are)."""
        drawn = copy.copy(self)
        drawn.pictures, drawn.scenes = draw_pool(min(n, len(self)), image_processor, self.picture, workers=workers)
        return drawn

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.pictures is None:
            scene = self.scene(i)
            image = self.image(scene, i)
        else:
            shown = i % len(self.pictures)
            scene = self.scenes[shown]
            image = Image.fromarray(self.pictures[shown].permute(1, 2, 0).numpy())
        return Example(image, *self.text(scene, i))

    def text(self, scene: world.Scene, i: int) -> tuple[str, str]:
        """Example ``i``'s prompt and target about ``scene``."""
        rng = random.Random(f"question:{self.seed}:{i}")
        if rng.random() * self.per_scene < 1:
            return "", world.caption(scene)
        qa = world.questions(scene)
        asked = rng.choice(["colour", "count", "presence"])
        question, answer = rng.choice([pair for pair in qa if world.question_kind(pair[0]) == asked])
        # 1 to MAX_PAST_TURNS past turns, the most half the time: long prompts are rare otherwise
        turns = min(rng.randint(1, 2 * MAX_PAST_TURNS - 2), MAX_PAST_TURNS)
        past = [rng.choice(qa) for _ in range(turns)] if self.chat and rng.random() < 0.6 else []
        system = random_system(rng) if self.chat and rng.random() < 0.5 else None
        return chat_text(self.family, past, question, system), answer


def pictures(n_scenes: int, seed: int, *, palette: Sequence[str] = world.BASIC_COLOURS) -> list[Picture]:
    """``n_scenes`` fresh scenes of the world drawn from ``seed``, plain (64 px, hard edges)."""
    rng = random.Random(seed)
    scenes = [world.random_scene(rng, palette=palette) for _ in range(n_scenes)]
    return [Picture(world.render(s), world.caption(s), world.questions(s)) for s in scenes]


def corpus(family: Family = DEMO_FAMILY) -> list[str]:
    """The tokenizer's training text: the world's captions and questions (:func:`world.corpus`), the
    same as past chat turns, and the system texts."""
    _, qa = world.all_texts()
    return [*world.corpus(family.render_question), *(family.turn.format(question=q, answer=a) for q, a in qa),
            *SYSTEM_TEXTS, " ".join(FILLER)]


def _norm(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def evaluate(caption_fn: CaptionFn, ask_fn: AskFn, *, n_scenes: int = 500, seed: int = 1, batch_size: int = 64,
             palette: Sequence[str] = world.BASIC_COLOURS, scenes: Sequence[Picture] | None = None) -> dict[str, Any]:
    """Caption exact match and VQA accuracy on ``n_scenes`` fresh scenes drawn from ``seed`` (or on
    the given ``scenes``, e.g. drawn by another renderer).

    Every scene is captioned and asked every question of :func:`world.questions`. Answers are
    compared after stripping, lower-casing and dropping a final period. The functions get batches of
    at most ``batch_size`` items. Returns the rates, per-kind VQA accuracy, counts and a few mistakes.
    """
    if scenes is None:
        scenes = pictures(n_scenes, seed, palette=palette)
    images = [p.image for p in scenes]
    captions: list[str] = []
    for i in range(0, len(images), batch_size):
        captions += caption_fn(images[i : i + batch_size])
    items = [(p.image, q, a) for p in scenes for q, a in p.questions]
    answers: list[str] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        answers += ask_fn([im for im, _, _ in chunk], [q for _, q, _ in chunk])
    mistakes: list[dict[str, str]] = []
    caption_ok = [_norm(got) == _norm(p.caption) for got, p in zip(captions, scenes)]
    mistakes += [{"task": "caption", "expected": p.caption, "got": got}
                 for got, p, ok in zip(captions, scenes, caption_ok) if not ok]
    per_kind: dict[str, list[bool]] = {"colour": [], "count": [], "presence": []}
    for (_, q, a), got in zip(items, answers):
        ok = _norm(got) == _norm(a)
        per_kind[world.question_kind(q)].append(ok)
        if not ok:
            mistakes.append({"task": "ask", "question": q, "expected": a, "got": got})
    vqa_ok = [ok for oks in per_kind.values() for ok in oks]
    return {
        "caption_exact_match": sum(caption_ok) / max(1, len(caption_ok)),
        "vqa_accuracy": sum(vqa_ok) / max(1, len(vqa_ok)),
        **{f"vqa_{kind}": sum(oks) / max(1, len(oks)) for kind, oks in per_kind.items()},
        "n_scenes": len(scenes), "n_questions": len(vqa_ok), "seed": seed, "mistakes": mistakes[:10],
    }


def evaluate_chat(host: Host, scenes: Sequence[Picture], *, turns: int = 5, seed: int = 0,
                  system: str | None = None, workers: int = 32) -> dict[str, Any]:
    """Accuracy at each turn of one ``turns``-question conversation per scene (``host.chat``).

    Each conversation asks ``turns`` questions drawn from the scene's own (seeded), one after another,
    after the optional ``system`` text; the model's own answers form the history. A turn the model
    cannot take (e.g. the system text and question do not fit its context) counts as wrong, and in
    ``refused``. ``workers`` conversations run at once, so the host batches their turns.
    """
    rng = random.Random(seed)
    plans = [[rng.choice(p.questions) for _ in range(turns)] for p in scenes]
    refused: list[str] = []

    def talk(index: int) -> list[bool]:
        conversation = host.chat(scenes[index].image, system=system)
        right = []
        for question, answer in plans[index]:
            try:
                right.append(_norm(conversation.ask(question).text or "") == _norm(answer))
            except Blip2Error as error:
                refused.append(str(error))
                right.append(False)
        return right

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(talk, range(len(scenes))))
    per_turn = [sum(r[t] for r in results) / max(1, len(results)) for t in range(turns)]
    return {"per_turn": per_turn, "worst_turn": min(per_turn, default=0.0), "conversations": len(scenes),
            "turns": turns, "system": system, "refused": len(refused), "first_refusal": refused[0] if refused else None}


def host_fns(host: Host) -> tuple[CaptionFn, AskFn]:
    """The host's batched ``caption`` and ``ask`` as the two functions :func:`evaluate` takes."""
    return (lambda images: [r.text or "" for r in host.caption(images)],
            lambda images, questions: [r.text or "" for r in host.ask(images, questions)])


def prepare_for_scratch(model: Any, *, seed: int, init_std: float = INIT_STD) -> Any:
    """Ready a freshly built model for training from scratch: no Q-Former dropout (its config
    defaults to 0.1) and weights of the vision tower, Q-Former and projection drawn with ``init_std``."""
    qformer = model.config.qformer_config
    qformer.hidden_dropout_prob = qformer.attention_probs_dropout_prob = 0.0
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for part in (model.vision_model, model.qformer, model.language_projection):
            for module in part.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
                    module.weight.normal_(0.0, init_std, generator=generator)
    model.set_attn_implementation("eager")  # at head width 16 on CPU, a fifth faster to train than SDPA
    return model


@contextlib.contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero inside the block (where the CPU can), and stop after it."""
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


@_denormals_flushed()
def train_demo(out_dir: str | os.PathLike[str], *, seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS,
               vision_steps: int = DEFAULT_VISION_STEPS, vision_pool: int = DEFAULT_VISION_POOL, batch_size: int = 64,
               lr: float = 1e-3, warmup: int = 200, questions_per_scene: int = 2, pool: int = DEFAULT_POOL,
               eval_scenes: int = 1000, threads: int | None = 2, spec: ModelSpec = DEMO_SPEC, progress: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the demo model from scratch, evaluate it on fresh scenes and save it with its card.

    Stage 1 pretrains the vision encoder for ``vision_steps`` on ``vision_pool`` pictures
    (:func:`.vision_pretrain.pretrain_vision`);
    stage 2 trains the Q-Former and the language model on captions, questions and chats for ``steps``
    with the vision encoder frozen, as BLIP-2 does, on ``pool`` pictures drawn up front. Returns the
    card's numbers: held-out metrics, parameter count, size and time. Denormal floats are flushed to
    zero while it trains (a tenth faster on CPU, and as reproducible).
    """
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    tokenizer = train_tokenizer(corpus(DEMO_FAMILY), DEMO_FAMILY.name)
    processor = build_processor(tokenizer, spec)
    model = prepare_for_scratch(build_model(processor, DEMO_FAMILY.name, spec, seed=seed), seed=seed)
    vision = pretrain_vision(model.vision_model, processor.image_processor, seed=seed, steps=vision_steps,
                            pool=vision_pool, log=log)
    log(f"vision encoder pretrained in {vision['vision_seconds']:.0f} s, loss {vision['vision_first_loss']:.3f} -> "
        f"{vision['vision_final_loss']:.4f}")
    n_scenes = -(-steps * batch_size // (1 + questions_per_scene))  # as many examples as the steps take
    drawing = time.perf_counter()
    examples = SceneExamples(n_scenes, seed, questions_per_scene=questions_per_scene).drawn(pool, processor.image_processor)
    pool = len(examples.pictures)
    pool_seconds = time.perf_counter() - drawing
    log(f"stage 2: {pool:,} pictures drawn in {pool_seconds:.0f} s")
    config = TrainConfig(method="full", freeze=("vision_model.",), steps=steps, batch_size=batch_size, lr=lr,
                         warmup=warmup, schedule="cosine", weight_decay=0.01, max_grad_norm=1.0, seed=seed,
                         progress=progress, shuffle=False, augment=("hflip",), mixed_precision="bf16")
    report = train(model, processor, examples, config, family=DEMO_FAMILY)
    log(f"trained {report.steps} steps in {report.seconds:.0f} s, loss {report.first_loss:.3f} -> {report.final_loss:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    eval_seed = seed + EVAL_SEED_OFFSET
    eval_start = time.perf_counter()
    with Host.load(str(out)) as host:  # measured as it will be served
        metrics = evaluate(*host_fns(host), n_scenes=eval_scenes, seed=eval_seed)
    eval_seconds = time.perf_counter() - eval_start
    log(f"held-out (seed {eval_seed}, {eval_scenes} scenes): caption exact match "
        f"{metrics['caption_exact_match']:.4f}, VQA accuracy {metrics['vqa_accuracy']:.4f}")
    total_seconds = time.perf_counter() - started
    facts = {
        "seed": seed, "eval_seed": eval_seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "warmup": warmup, "init_std": INIT_STD, **vision, "pool": pool, "pool_seconds": round(pool_seconds, 1),
        "questions_per_scene": questions_per_scene,
        "examples_seen": report.examples_seen, "spec": asdict(spec), "family": DEMO_FAMILY.name,
        "params": count_parameters(model)[1], "vocab_size": len(processor.tokenizer),
        "train_seconds": round(report.seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(total_seconds, 1), "threads": torch.get_num_threads(),
        "first_loss": round(report.first_loss, 4), "final_loss": round(report.final_loss, 5),
        "metrics": {k: v for k, v in metrics.items() if k != "mistakes"},
        "mistakes": metrics["mistakes"],
        **software_versions(),
    }
    facts["size_bytes"] = write_card(out, lambda size: model_card(facts, size))
    return facts


def write_card(out: Path, card: Callable[[int], str]) -> int:
    """Write a model folder's README.md (``card`` gets the folder's size in bytes, the card aside) and
    make its files world-readable; returns that size."""
    size = _size(out)
    (out / "README.md").write_text(card(size))
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)
    return size


def software_versions() -> dict[str, str]:
    """The torch, transformers and Python versions a model was trained with, for its card."""
    from importlib.metadata import version

    return {"torch": torch.__version__, "transformers": version("transformers"), "python": platform.python_version()}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != "README.md")


def model_card(facts: dict[str, Any], size: int) -> str:
    """The README.md of the demo model folder, from the numbers measured by :func:`train_demo`."""
    m, spec = facts["metrics"], facts["spec"]
    colours = "; ".join(f"{c}: hue {_band(c)}, saturation {world.SATURATION[c][0]}-{world.SATURATION[c][1]}, "
                        f"value {world.VALUE[c][0]}-{world.VALUE[c][1]}" for c in world.BASIC_COLOURS)
    mistakes = "\n".join(f"- {json.dumps(x)}" for x in facts["mistakes"]) or "- none"
    return f"""# blip2plugins demo model

A tiny BLIP-2 (OPT language model) trained from scratch on synthetic shape scenes, bundled so that
every command and test of blip2plugins runs offline. It is a toy: it only knows this world.

## The world (`blip2plugins.demo.world`)
- 1 to 3 shapes, each of circle / square / triangle (pointing up) at most once, never overlapping,
  anywhere on the canvas; sides of {world.SIZE[0]} to {world.SIZE[1]} px on a 64 px canvas (about 14% to 47% of it).
- Colours are shades a person calls by their name ({colours}); each shape differs from its background
  by at least {world.MIN_CONTRAST} levels in some channel. The purple band ({_band("purple")}) never appears in
  training data; `world.make_scene({{"circle": "purple"}})` draws it.
- White, gray or dark backgrounds (grey levels {", ".join(f"{k} {lo}-{hi}" for k, (lo, hi) in world.BACKGROUNDS.items())}),
  tinted by up to {world.TINT} levels per channel.
- Caption: shapes in the fixed order circle, square, triangle, e.g. "a red circle and a blue square".
- Questions (prompt "Question: {{q}} Answer:"): "what color is the {{shape}}?" -> colour,
  "how many shapes?" -> one / two / three, "is there a {{shape}}?" -> yes / no. Captions use an empty prompt.
- Chat: up to 5 turns ("Question: q1 Answer: a1. Question: q2 Answer:"), after a system text or not.

## Model
- Blip2ForConditionalGeneration, OPT family: {spec['image_size']}x{spec['image_size']} input, patch {spec['patch_size']}; a vision encoder
  of width {spec['vision_hidden']} and {spec['vision_layers']} layers; Q-Former and OPT of width {spec['hidden']} and {spec['layers']} layers;
  {spec['heads']} heads, {spec['num_query_tokens']} query tokens; a {spec['max_positions']}-token context (5 turns beside a
  system text of about 40 tokens and the default 30 new tokens; trained on prompts up to the end of that room).
- {facts['params']:,} parameters; model + processor files {size / 1e6:.2f} MB (fp32 safetensors).
- Tokenizer: byte-level BPE ({facts['vocab_size']} tokens with `<image>`) trained on every caption,
  question/answer line and chat turn of the world and the recipe's system texts
  (`blip2plugins.building.train_tokenizer`); the word "purple" is in the vocabulary but in no training example.

## What it does not know
- Anything outside this world: photos, other shapes (stars, ovals, downward triangles), more than
  three shapes or two of a kind, overlapping shapes, textured or gradient backgrounds, colours
  other than the four (purple, orange, pink, brown, black, white shapes...): it names them as one of
  the shapes and colours it knows, often with a high score.
- Other questions than the three kinds above, and other words for them ("which colour...").
- Shapes smaller than about 8 px, or barely differing from their background.
- Chats longer than its context: ChatBlip2 and `blip2 chat` drop the oldest turns first.
- System texts far longer than its training's ({MAX_SYSTEM_CHARS} characters at most, besides its common
  ones; the chat table's 78-character one holds): beside a long one the host keeps fewer past turns.
- How sure it is, on pictures far from its training: on badly degraded ones its `score` tells right
  captions from wrong ones only in part (see the AUROC below).

## Recipe
Two stages, as BLIP-2 has: a vision encoder trained first, then frozen while the Q-Former and the
language model learn to talk about what it sees.
- Built with `blip2plugins.building` (seed {facts['seed']}), then `prepare_for_scratch`: Q-Former dropout off and the
  vision tower, Q-Former and projection weights drawn with std {facts['init_std']} (the configs' 0.02 left the
  tiny ViT's attention nearly uniform, and it learned shapes far more slowly).
- Stage 1 (`demo.vision_pretrain`): the vision encoder and a linear head on the mean of its outputs name each
  kind's colour or its absence (cross-entropy over 3 x 5 classes). {facts['vision_pool']:,} pictures drawn once (seed
  {facts['seed']}): half plain scenes of 20 px shapes, half the whole world in random looks (`world.random_look`:
  half on the 64 px square, half on canvases of 28-160 px a side and aspect up to 1.7, which the
  processor stretches to its input; hard or anti-aliased edges; noise in 30%, JPEG at quality 30-95
  in 35%); horizontal flips. A curriculum: the share of whole-world pictures grows from none to all
  over the first {facts['vision_ramp']:.0%} of the steps. AdamW, lr {facts['vision_lr']}, cosine decay, batch
  {facts['vision_batch_size']}, {facts['vision_steps']} steps, bfloat16 autocast: loss {facts['vision_first_loss']} -> {facts['vision_final_loss']},
  {facts['vision_seconds']:.0f} s with drawing.
- Stage 2: `blip2plugins.training.train`, method `full` with the vision encoder frozen, bfloat16 autocast:
  AdamW (weight decay 0.01, none on biases/norms), lr {facts['lr']}, {facts['warmup']} warmup steps then cosine decay,
  grad clipping 1.0, batch {facts['batch_size']}, {facts['steps']} steps ({facts['examples_seen']:,} examples), seed {facts['seed']}.
  Data (`recipe.SceneExamples`): {facts['pool']:,} scenes (seed {facts['seed']}) drawn once in random looks ({facts['pool_seconds']:.0f} s),
  {ROUGH_LOOKS:.0%} of them rough (`world.rough_look`: 14-160 px a side with aspect up to 4, strong noise in half, JPEG at
  quality 5-40 in 60%; the model learns to be unsure where a picture hides its scene),
  each shown about {facts['examples_seen'] / facts['pool']:.0f} times with a text of its own, flipped horizontally at random; a third are captions,
  27% single questions, 40% questions after 1 to {MAX_PAST_TURNS} past turns about the same scene ({MAX_PAST_TURNS} half the time),
  rendered as the host renders a chat; half of the questions follow a system text (a common one, or 2 to 30 words of
  `recipe.FILLER` and random letters, up to {MAX_SYSTEM_CHARS} characters): the longest prompts fill the room the
  host leaves a prompt.
  Loss {facts["first_loss"]} (mean of the first 50 steps) -> {facts['final_loss']} (last steps), {facts['train_seconds']:.0f} s.
- The whole command took {facts['total_seconds']:.0f} s on {facts['threads']} CPU threads
  (torch {facts['torch']}, transformers {facts['transformers']}, Python {facts['python']}).

Reproduce: `blip2 demo train --seed {facts['seed']} --vision-steps {facts['vision_steps']} --steps {facts['steps']} --eval-scenes {m['n_scenes']}` (writes this folder).

## Held-out accuracy on its own renderer (measured)
{m['n_scenes']} fresh scenes from seed {facts['eval_seed']} (not the training seed), drawn plain (64 px, hard edges), greedy decoding:

| metric | value |
|---|---|
| caption exact match ({m['n_scenes']} captions) | {m['caption_exact_match']:.4f} |
| VQA accuracy ({m['n_questions']} questions) | {m['vqa_accuracy']:.4f} |
| VQA colour | {m['vqa_colour']:.4f} |
| VQA count | {m['vqa_count']:.4f} |
| VQA presence | {m['vqa_presence']:.4f} |

Re-measure: `blip2 demo eval --scenes {m['n_scenes']} --seed {facts['eval_seed']}`.

Mistakes (up to 10):
{mistakes}

## On another renderer (measured)
{CARD_MARKERS[0]}
Not measured yet: run `python benchmarks/demo_generalization.py --card`.
{CARD_MARKERS[1]}
"""


def _band(colour: str) -> str:
    centre, half = world.HUE_BANDS[colour]
    return f"{(centre - half) % 360:.0f}-{(centre + half) % 360:.0f} deg"
