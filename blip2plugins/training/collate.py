"""Turn ``(image, prompt, target)`` examples into BLIP-2 training batches.

The layout is the one the host uses at inference: ``num_query_tokens`` image tokens, then the
tokenized text, padded on the left (OPT) or the right (T5). Labels follow the rule of the model's
forward loss:

* OPT (decoder-only): the text is ``prompt + " " + target`` (just ``target`` when the prompt is
  empty, as for captions) followed by EOS. Labels are ``-100`` on the image tokens, padding, BOS and
  the prompt, and the real ids on the target and EOS; they have the length of ``input_ids``, which
  the model aligns with the end of its logits.
* T5 (encoder-decoder): the encoder gets the prompt, right-padded (as the host pads it); labels are
  ``target + EOS``, right-padded with ``-100``.

Prompts come from :mod:`blip2plugins.families` (``family.render_question(q)``; captions use ``""``),
so a trained model sees the prompts the host will send.

With ``max_length`` (the context, which a decoder-only model's position embeddings bound; T5
examples are not held to it) a decoder-only example longer than it is refused with a
:class:`~blip2plugins.errors.DataError` naming it, before the model sees an index it has no position for.

``augment`` flips images at random (``"hflip"``, ``"vflip"``, each with probability 1/2, seeded): more
layouts from few labels, for texts that do not depend on left/right or up/down.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import random

import torch
from PIL import Image, ImageOps

from ..errors import DataError
from ..families import FAMILIES, Family

IGNORE = -100
AUGMENTATIONS = {"hflip": ImageOps.mirror, "vflip": ImageOps.flip}


#: Most tokenized prompts a collator keeps.
PROMPT_CACHE = 4096


class Example(NamedTuple):
    """One training record: an image, the prompt (``""`` for captions) and the expected output."""

    image: Any
    prompt: str
    target: str


class Collator:
    """``collator(examples) -> {"pixel_values", "input_ids", "attention_mask", "labels"}``."""

    def __init__(self, processor: Any, family: Family | str, *, augment: Sequence[str] = (), seed: int = 0,
                 max_length: int | None = None) -> None:
        unknown = sorted(set(augment) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r}: expected some of {sorted(AUGMENTATIONS)}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = FAMILIES[family] if isinstance(family, str) else family
        self.augment = tuple(augment)
        self._rng = random.Random(seed)
        self._prompt_ids: dict[str, list[int]] = {}
        self.max_length = max_length

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        images = [self._augmented(ex.image) for ex in examples]
        if self.family.decoder_only:
            return self._decoder_only(images, [ex.prompt for ex in examples], [ex.target for ex in examples])
        return self._encoder_decoder(images, [ex.prompt for ex in examples], [ex.target for ex in examples])

    def _augmented(self, image: Image.Image) -> Image.Image:
        for name in self.augment:
            if self._rng.random() < 0.5:
                image = AUGMENTATIONS[name](image)
        return image

    @staticmethod
    def text(prompt: str, target: str) -> str:
        """The decoder-only training text: ``prompt + " " + target``, or ``target`` alone."""
        return f"{prompt} {target}" if prompt else target

    def _prompt(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            if len(self._prompt_ids) >= PROMPT_CACHE:  # varied prompts (chat histories) must not grow it forever
                self._prompt_ids.clear()
            self._prompt_ids[prompt] = self.tokenizer(prompt).input_ids
        return self._prompt_ids[prompt]

    def _decoder_only(self, images: list[Any], prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.text(p, t) for p, t in zip(prompts, targets)]
        full = self.tokenizer(texts).input_ids
        n_target = []
        for prompt, ids in zip(prompts, full):
            prefix = self._prompt(prompt)
            if ids[: len(prefix)] != prefix:
                raise ValueError(f"the prompt {prompt!r} does not tokenize to a prefix of its training text")
            n_target.append(len(ids) - len(prefix) + 1)  # + EOS
        self._check_length(prompts, targets, [len(ids) + 1 for ids in full])
        batch = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        eos = torch.full((len(texts), 1), self.tokenizer.eos_token_id, dtype=batch["input_ids"].dtype)
        input_ids = torch.cat([batch["input_ids"], eos], dim=1)
        attention_mask = torch.cat([batch["attention_mask"], torch.ones_like(eos)], dim=1)
        labels = torch.full_like(input_ids, IGNORE)
        for i, n in enumerate(n_target):
            labels[i, -n:] = input_ids[i, -n:]
        return {"pixel_values": batch["pixel_values"], "input_ids": input_ids,
                "attention_mask": attention_mask, "labels": labels}

    def _check_length(self, prompts: list[str], targets: list[str], lengths: list[int]) -> None:
        """Refuse the first example whose text (with EOS) and the image's query tokens exceed ``max_length``."""
        if self.max_length is None:
            return
        queries = getattr(self.processor, "num_query_tokens", None) or 0
        for prompt, target, length in zip(prompts, targets, lengths):
            if queries + length > self.max_length:
                raise DataError(
                    f"a training example is too long for the model: prompt {prompt[:80]!r}, target {target[:80]!r} make "
                    f"{length} tokens, and the model's {self.max_length}-token context holds "
                    f"{self.max_length - queries} beside the image's {queries} query tokens")

    def _encoder_decoder(self, images: list[Any], prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        # Right padding, as the host pads T5 prompts: T5's relative positions would count left pads
        # lying between the image tokens and the text.
        batch = self.processor(images=images, text=prompts, padding=True, padding_side="right", return_tensors="pt")
        target_ids = self.tokenizer(targets).input_ids  # the T5 template appends EOS
        width = max(len(ids) for ids in target_ids)
        labels = torch.full((len(targets), width), IGNORE, dtype=torch.long)
        for i, ids in enumerate(target_ids):
            labels[i, : len(ids)] = torch.tensor(ids)
        return {"pixel_values": batch["pixel_values"], "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"], "labels": labels}
