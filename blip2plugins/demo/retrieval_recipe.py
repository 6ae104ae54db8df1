"""The recipe of the demo model's retrieval head (ITC + ITM), and the recall evaluation that measures it.

``train_demo_retrieval(out_dir)`` builds a :class:`~transformers.Blip2ForImageTextRetrieval` of the demo
model's sizes, starts it from the shipped captioning model (:func:`init_from_demo`), trains it with
:func:`~blip2plugins.training.retrieval_train.train_retrieval` on captions of freshly drawn scenes,
measures recall on held-out scenes and saves model, processor and a model card.
``retrieval_recall(image_fn, text_fn)`` measures any embedder (the host, or a raw model via
:func:`model_fns`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Processor

from .. import retrieval
from ..building import build_retrieval_model
from ..errors import ModelLoadError, OptionError
from ..training.retrieval_train import RetrievalTrainConfig, train_retrieval
from . import MODEL_DIR, world
from .recipe import (CARD_MARKERS, DEMO_SPEC, EVAL_SEED_OFFSET, ROUGH_LOOKS, Picture, SceneExamples, pictures,
                     software_versions, write_card)

ImageFn = Callable[[list[Image.Image]], torch.Tensor]  # images -> (N, Q, D) unit-length query embeddings
TextFn = Callable[[list[str]], torch.Tensor]  # texts -> (N, D) unit-length embeddings
MatchFn = Callable[[list[Image.Image], list[str]], torch.Tensor]  # image i, text i -> (N,) ITM match probability

DEFAULT_SEED = 0
DEFAULT_STEPS = 2000
#: ITM loss weight of the demo recipe. The ITC gradients grow with 1 / temperature (about 0.01 once
#: learned), so with weight 1 the ITM signal drowned in the shared Q-Former's updates and the head
#: only learned the class prior (loss stuck at the entropy of 1/3 positives, 0.636).
ITM_WEIGHT = 20.0
#: The seed of :func:`retrieval_recall`'s scenes by default: the shipped head's held-out seed.
DEFAULT_EVAL_SEED = DEFAULT_SEED + EVAL_SEED_OFFSET
MAX_TEXT_TOKENS = 32
_TEXT_FFN = re.compile(r"(\.layer\.\d+\.(?:intermediate|output))\.")  # a Q-Former layer's text feed-forward


class CaptionScenes(Sequence[tuple[Image.Image, str]]):
    """``(image, caption)`` of ``n_scenes`` scenes drawn lazily from ``seed`` (the scenes and looks of
    :class:`~blip2plugins.demo.recipe.SceneExamples`)."""

    def __init__(self, n_scenes: int, seed: int, *, looks: bool = True) -> None:
        self.scenes = SceneExamples(n_scenes, seed, questions_per_scene=0, looks=looks)

    def __len__(self) -> int:
        return self.scenes.n_scenes

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        scene = self.scenes.scene(i)
        return self.scenes.image(scene, i), world.caption(scene)


def init_from_demo(model_dir: str | os.PathLike[str] = MODEL_DIR, *, seed: int = DEFAULT_SEED
                   ) -> tuple[Blip2ForImageTextRetrieval, Blip2Processor]:
    """A retrieval model of the demo's sizes, started from the captioning model in ``model_dir``.

    Copied: the vision encoder, query tokens and Q-Former (same names); the Q-Former's text
    feed-forward layers, never trained there, start as copies of its query feed-forward layers (as
    BLIP-2 initialises the query ones from the text ones); the word embeddings are the language
    model's input embeddings (same tokenizer and width). New: the ITC projections and ITM head
    (seed ``seed``). Q-Former dropout is off, as in the captioning model. A folder whose model does not
    have the demo's sizes raises :class:`ModelLoadError`.
    """
    try:
        processor = Blip2Processor.from_pretrained(model_dir)
        source = Blip2ForConditionalGeneration.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{model_dir}: not a BLIP-2 captioning model folder ({error})") from error
    model = build_retrieval_model(processor, DEMO_SPEC, seed=seed)
    qformer = model.config.qformer_config
    qformer.hidden_dropout_prob = qformer.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    weights = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in ("vision_model", "query_tokens", "qformer")}
    for name in list(weights):
        query_name = _TEXT_FFN.sub(r"\1_query.", name)
        if query_name != name:
            weights[name] = weights[query_name]
    weights["embeddings.word_embeddings.weight"] = source.get_input_embeddings().weight
    params = model.state_dict()
    wrong = sorted(k for k, v in weights.items() if k not in params or params[k].shape != v.shape)
    if wrong:
        raise ModelLoadError(f"{model_dir}: not of the demo model's sizes ({len(wrong)} weights differ, e.g. {wrong[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return model.eval(), processor


class RetrievalFns(NamedTuple):
    """What :func:`retrieval_recall` measures: embeddings of images and texts, and ITM match probabilities."""

    image: ImageFn
    text: TextFn
    match: MatchFn


def load_retrieval(model_dir: str | os.PathLike[str]) -> tuple[Blip2ForImageTextRetrieval, Blip2Processor]:
    """A saved retrieval model and its processor (eval mode), or :class:`ModelLoadError` naming the folder."""
    try:
        model = Blip2ForImageTextRetrieval.from_pretrained(model_dir)
        processor = Blip2Processor.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{model_dir}: not a BLIP-2 retrieval model folder ({error})") from error
    return model.eval(), processor


def model_fns(model: Blip2ForImageTextRetrieval, processor: Any, *, batch_size: int = 64) -> RetrievalFns:
    """The embedding and matching functions of a raw retrieval model, for :func:`retrieval_recall`."""
    max_length = min(MAX_TEXT_TOKENS, model.config.qformer_config.max_position_embeddings)

    @torch.no_grad()
    def image_fn(images: list[Image.Image]) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            pixels = processor.image_processor(images[i : i + batch_size], return_tensors="pt").pixel_values
            out.append(retrieval.image_embeddings(model, pixels).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_fn(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = retrieval.tokenize(processor.tokenizer, texts[i : i + batch_size], max_length)
            out.append(retrieval.text_embeddings(model, ids, mask).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def match_fn(images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            pixels = processor.image_processor(images[i : i + batch_size], return_tensors="pt").pixel_values
            ids, mask = retrieval.tokenize(processor.tokenizer, texts[i : i + batch_size], max_length)
            logits = retrieval.itm_logits(model, retrieval.vision_states(model, pixels), ids, mask)
            out.append(logits.float().softmax(dim=-1)[:, 1].cpu())
        return torch.cat(out)

    return RetrievalFns(image_fn, text_fn, match_fn)


def retrieval_recall(image_fn: ImageFn, text_fn: TextFn, *, n_scenes: int = 500, seed: int = DEFAULT_EVAL_SEED,
                     match_fn: MatchFn | None = None, batch_size: int = 64,
                     palette: Sequence[str] = world.BASIC_COLOURS, scenes: Sequence[Picture] | None = None
                     ) -> dict[str, Any]:
    """Recall@1 / @5 of ITC retrieval on ``n_scenes`` fresh scenes drawn from ``seed`` (or on the
    given ``scenes``, e.g. drawn by another renderer).

    The candidates are the scenes' images and their distinct captions. Text->image: each distinct
    caption is a query, and a hit is an image with that caption among the top k. Image->text: each
    image is a query over the distinct captions, and a hit is its own caption among the top k.
    Similarity is :func:`blip2plugins.retrieval.itc` of the embeddings; ``image_fn`` gets batches of at
    most ``batch_size`` images, ``text_fn`` of texts.

    With ``match_fn`` also ``itm_accuracy``: the balanced accuracy (threshold 0.5) of the match
    probabilities of every image with its own caption and with its hardest wrong caption (the
    highest ITC similarity).
    """
    if scenes is None:
        if n_scenes < 1:
            raise OptionError(f"n_scenes must be >= 1, got {n_scenes}")
        scenes = pictures(n_scenes, seed, palette=palette)
    n_scenes = len(scenes)
    captions = [p.caption for p in scenes]
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    truth = torch.tensor([index[c] for c in captions])
    shown = [p.image for p in scenes]
    images = torch.cat([image_fn(shown[i : i + batch_size]) for i in range(0, n_scenes, batch_size)])
    texts = torch.cat([text_fn(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)])
    sim = retrieval.itc(images.float(), texts.float())  # (images, captions)
    metrics: dict[str, Any] = {}
    for k in (1, 5):
        top_texts = sim.topk(min(k, len(distinct)), dim=1).indices  # (images, k)
        top_images = sim.T.topk(min(k, n_scenes), dim=1).indices  # (captions, k)
        metrics[f"text_to_image_r{k}"] = (truth[top_images] == torch.arange(len(distinct))[:, None]).any(1).float().mean().item()
        metrics[f"image_to_text_r{k}"] = (top_texts == truth[:, None]).any(1).float().mean().item()
    if match_fn is not None:
        own = torch.cat([match_fn(shown[i : i + batch_size], captions[i : i + batch_size])
                         for i in range(0, n_scenes, batch_size)])
        rates = [(own > 0.5).float().mean().item()]
        if len(distinct) > 1:
            hardest = sim.scatter(1, truth[:, None], float("-inf")).argmax(dim=1)
            wrong = torch.cat([match_fn(shown[i : i + batch_size], [distinct[j] for j in hardest[i : i + batch_size]])
                               for i in range(0, n_scenes, batch_size)])
            rates.append((wrong < 0.5).float().mean().item())
        metrics["itm_accuracy"] = sum(rates) / len(rates)
    return {**metrics, "n_scenes": n_scenes, "n_captions": len(distinct), "seed": seed}


def train_demo_retrieval(out_dir: str | os.PathLike[str], *, seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS,
                         batch_size: int = 64, lr: float = 1e-3, warmup: int = 100, itm_weight: float = ITM_WEIGHT,
                         eval_scenes: int = 500, threads: int | None = 2, progress: bool = True,
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the demo retrieval head, measure it on held-out scenes and save it with its card.

    Returns the card's numbers: recall and ITM accuracy (at initialisation and trained), parameter
    counts, size and time.
    """
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    eval_seed = seed + EVAL_SEED_OFFSET
    model, processor = init_from_demo(seed=seed)
    fns = model_fns(model, processor)
    before = retrieval_recall(fns.image, fns.text, match_fn=fns.match, n_scenes=eval_scenes, seed=eval_seed)
    config = RetrievalTrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, itm_weight=itm_weight,
                                  seed=seed, max_length=MAX_TEXT_TOKENS, progress=progress)
    report = train_retrieval(model, processor, CaptionScenes(steps * batch_size, seed), config)
    log(f"trained {report.steps} steps in {report.seconds:.0f} s, ITC loss {report.itc_losses[0][1]:.3f} -> "
        f"{report.itc_losses[-1][1]:.4f}, ITM loss {report.itm_losses[0][1]:.3f} -> {report.itm_losses[-1][1]:.4f}, "
        f"temperature {report.temperature:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    eval_start = time.perf_counter()
    fns = model_fns(*load_retrieval(out))  # measured as saved
    metrics = retrieval_recall(fns.image, fns.text, match_fn=fns.match, n_scenes=eval_scenes, seed=eval_seed)
    eval_seconds = time.perf_counter() - eval_start
    log(f"held-out (seed {eval_seed}, {eval_scenes} scenes): text->image R@1 {metrics['text_to_image_r1']:.4f}, "
        f"image->text R@1 {metrics['image_to_text_r1']:.4f}, ITM accuracy {metrics['itm_accuracy']:.4f}")
    facts = {
        "seed": seed, "eval_seed": eval_seed, "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup,
        "weight_decay": config.weight_decay, "itm_weight": itm_weight, "init_temperature": config.temperature,
        "temperature": round(report.temperature, 4), "freeze": list(config.freeze),
        "examples_seen": report.examples_seen, "spec": asdict(DEMO_SPEC),
        "params": report.total_params, "trainable_params": report.trainable_params,
        "train_seconds": round(report.seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
        "itc_loss": [round(report.itc_losses[0][1], 4), round(report.itc_losses[-1][1], 4)],
        "itm_loss": [round(report.itm_losses[0][1], 4), round(report.itm_losses[-1][1], 4)],
        "metrics": metrics, "before": before,
        **software_versions(),
    }
    facts["size_bytes"] = write_card(out, lambda size: model_card(facts, size))
    return facts


def model_card(facts: dict[str, Any], size: int) -> str:
    """The README.md of the retrieval head's folder, from the numbers measured by :func:`train_demo_retrieval`."""
    m, b, spec = facts["metrics"], facts["before"], facts["spec"]
    rows = "\n".join(f"| {label} | {b[key]:.4f} | {m[key]:.4f} |" for label, key in (
        ("text->image R@1", "text_to_image_r1"), ("text->image R@5", "text_to_image_r5"),
        ("image->text R@1", "image_to_text_r1"), ("image->text R@5", "image_to_text_r5"),
        ("ITM accuracy (own vs hardest caption)", "itm_accuracy")))
    return f"""# blip2plugins demo retrieval head

The retrieval half of the bundled demo model: a `Blip2ForImageTextRetrieval` (vision encoder, query
tokens, Q-Former reading text, ITC projections, ITM head) for the synthetic shape scenes of
`blip2plugins.demo.world` (see `../README.md`). It matches images and captions of that world and
nothing else.

## Model
- {spec['image_size']}x{spec['image_size']} input, patch {spec['patch_size']}; a vision encoder of width {spec['vision_hidden'] or spec['hidden']} and
  {spec['vision_layers'] or spec['layers']} layers; a Q-Former of width {spec['hidden']} and {spec['layers']} layers; {spec['heads']} heads, {spec['num_query_tokens']} query tokens, ITC embeddings of
  {spec['hidden']} dimensions; the tokenizer is the captioning model's.
- {facts['params']:,} parameters ({facts['trainable_params']:,} trained); model + processor files
  {size / 1e6:.2f} MB (fp32 safetensors).
- Similarity (ITC): the maximum over the {spec['num_query_tokens']} query embeddings of the cosine with the text
  embedding; the ITM head gives a match probability for a pair.

## Recipe
- Started from the captioning model (`blip2plugins.demo.retrieval_recipe.init_from_demo`): vision
  encoder, query tokens and Q-Former copied; the Q-Former's text feed-forward layers start as copies
  of its query ones; word embeddings from the language model's input embeddings. ITC projections
  and ITM head new (seed {facts['seed']}). Q-Former dropout off. Frozen: {', '.join(facts['freeze'])}.
- `blip2plugins.training.retrieval_train.train_retrieval`: ITC loss (both directions, learned
  temperature {facts['init_temperature']} -> {facts['temperature']}, every item with the same caption a positive)
  + {facts['itm_weight']:g} x ITM loss (a hard negative text per image and image per text, sampled from the ITC
  similarity, never a positive). The ITM weight is large because the ITC gradients grow with
  1 / temperature: with weight 1 the ITM loss stayed at the class prior (0.636) in short runs.
- AdamW (weight decay {facts['weight_decay']}, none on biases / norms / temperature), lr {facts['lr']},
  {facts['warmup']} warmup steps then cosine decay, grad clipping 1.0, batch {facts['batch_size']}, {facts['steps']} steps
  ({facts['examples_seen']:,} freshly drawn scenes, seed {facts['seed']}, each in a random look as the
  captioning model's: canvas size and aspect, edges, noise, JPEG; {ROUGH_LOOKS:.0%} of them rough).
- ITC loss {facts['itc_loss'][0]} -> {facts['itc_loss'][1]}, ITM loss {facts['itm_loss'][0]} -> {facts['itm_loss'][1]}
  (means of the first and the last logged steps).
- Training took {facts['train_seconds']:.0f} s, the whole command {facts['total_seconds']:.0f} s, on {facts['threads']} CPU
  threads (torch {facts['torch']}, transformers {facts['transformers']}, Python {facts['python']}).

Reproduce: `blip2 demo train-retrieval --seed {facts['seed']} --steps {facts['steps']}` (writes this folder).

## Held-out recall (measured)
{m['n_scenes']} fresh scenes from seed {facts['eval_seed']} (not the training seed), {m['n_captions']} distinct captions.
Text->image: each distinct caption retrieves among the {m['n_scenes']} images, a hit is an image with
that caption. Image->text: each image retrieves among the {m['n_captions']} captions, a hit is its own.
ITM accuracy: balanced accuracy (match probability > 0.5) of every image with its own caption and
with its hardest wrong caption by ITC similarity.

| metric | at initialisation | trained |
|---|---|---|
{rows}

Re-measure: `blip2 demo eval-retrieval --scenes {m['n_scenes']} --seed {facts['eval_seed']}`.

## On another renderer (measured)
{CARD_MARKERS[0]}
Not measured yet: run `python benchmarks/demo_generalization.py --card`.
{CARD_MARKERS[1]}

## What it does not know
What the captioning model does not (see `../README.md`): it ranks and matches only captions of this
world, and gives a high match to a picture of a shape or colour it never saw under the nearest
caption it knows.
"""
