"""Training losses of a BLIP-2 retrieval model: image-text contrastive (ITC) and matching (ITM).

As in BLIP-2's first stage (LAVIS), with the similarity of :func:`blip2plugins.retrieval.itc` (the
maximum over query tokens of the cosine):

- :func:`itc_loss`: in-batch contrastive loss in both directions, with a learned temperature
  (:class:`Temperature`). Items of the same *group* (e.g. the same caption) are all positives: the
  target distribution is spread evenly over them, so a repeated caption is never a negative. Under
  several processes the features of every process are gathered (:func:`gather_features`), so the
  negatives come from the global batch; gradients flow through this process's part.
- :func:`sample_negatives` and :func:`itm_loss`: for every image a hard negative text, for every text
  a hard negative image, sampled with probability proportional to the softmax of the similarity over
  the non-positives of the local batch, then a 2-way cross-entropy over ``B`` positive pairs,
  ``B`` image-with-negative-text and ``B`` text-with-negative-image pairs.
"""

from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

import torch
from accelerate.state import PartialState
from accelerate.utils import gather
from torch import nn
from torch.nn import functional as F
from transformers import Blip2ForImageTextRetrieval

from .. import retrieval


class Temperature(nn.Module):
    """A learned softmax temperature, clamped to ``[low, high]`` whenever it is read (as LAVIS does)."""

    def __init__(self, init: float = 0.07, low: float = 0.001, high: float = 0.5) -> None:
        super().__init__()
        if not 0 < low <= init <= high:
            raise ValueError(f"temperature needs 0 < low <= init <= high, got {low}, {init}, {high}")
        self.low, self.high = low, high
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        """The clamped temperature (a 0-d tensor that carries the gradient to the parameter)."""
        with torch.no_grad():
            self.value.clamp_(self.low, self.high)
        return self.value


def group_ids(groups: Sequence[Hashable]) -> torch.Tensor:
    """Stable int64 ids of ``groups`` (equal groups, equal ids, in every process and run)."""
    digests = (hashlib.blake2b(repr(g).encode(), digest_size=8).digest() for g in groups)
    return torch.tensor([int.from_bytes(d, "little", signed=True) for d in digests], dtype=torch.long)


def same_group(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``(R, C)`` bool: whether row item ``r`` and column item ``c`` share a group id (i.e. are positives)."""
    return rows[:, None] == columns[None, :]


def gather_features(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all, offset)``: ``local`` of every process concatenated along dim 0, and where this process's
    rows start. The gathered copy carries no gradient except for the local rows, which are ``local``
    itself. Every process must pass the same shape. One process: ``(local, 0)``."""
    state = PartialState()
    if state.num_processes == 1:
        return local, 0
    everything = gather(local.detach().contiguous())
    start = state.process_index * local.shape[0]
    return torch.cat([everything[:start], local, everything[start + local.shape[0]:]]), start


def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, groups: torch.Tensor,
             temperature: torch.Tensor) -> torch.Tensor:
    """Contrastive loss of per-query image embeddings ``(B, Q, D)`` and text embeddings ``(B, D)``
    (both unit length, item ``i`` an image and its text) with group ids ``(B,)``.

    The mean of the image->text and text->image cross-entropies of the similarities divided by
    ``temperature``, against targets spread evenly over the items of the same group, over the
    global batch (every process).
    """
    if not image_embeds.shape[0] == text_embeds.shape[0] == groups.shape[0]:
        raise ValueError(f"batch sizes differ: {image_embeds.shape[0]} images, {text_embeds.shape[0]} texts, "
                         f"{groups.shape[0]} groups")
    all_images, _ = gather_features(image_embeds)
    all_texts, _ = gather_features(text_embeds)
    all_groups, _ = gather_features(groups)
    targets = same_group(groups, all_groups).to(image_embeds.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    image_to_text = retrieval.itc(image_embeds, all_texts) / temperature
    text_to_image = retrieval.itc(all_images, text_embeds).T / temperature
    i2t = -(F.log_softmax(image_to_text, dim=1) * targets).sum(dim=1).mean()
    t2i = -(F.log_softmax(text_to_image, dim=1) * targets).sum(dim=1).mean()
    return (i2t + t2i) / 2


def sample_negatives(scores: torch.Tensor, positives: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each row of ``scores`` ``(R, C)``, a column drawn with probability ``softmax(scores)`` over
    the columns that are not ``positives`` ``(R, C)``; ``-1`` where every column is a positive."""
    logits = scores.detach().float().masked_fill(positives, float("-inf"))
    chosen = torch.full((scores.shape[0],), -1, dtype=torch.long)
    valid = ~positives.all(dim=1)
    if valid.any():
        probs = logits[valid].softmax(dim=1).cpu()
        chosen[valid.cpu()] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return chosen.to(scores.device)


def itm_loss(model: Blip2ForImageTextRetrieval, vision: torch.Tensor, input_ids: torch.Tensor,
             attention_mask: torch.Tensor, similarity: torch.Tensor, groups: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Image-text matching loss with hard negatives mined from ``similarity``.

    ``vision`` ``(B, P, H)`` (from :func:`retrieval.vision_states`), ``input_ids`` / ``attention_mask``
    ``(B, L)`` (right-padded) and ``groups`` ``(B,)`` describe ``B`` matching pairs; ``similarity``
    ``(B, B)`` is image ``i`` against text ``j`` (e.g. the ITC logits). Each image gets a negative text
    and each text a negative image (:func:`sample_negatives`, never of the same group); the loss is the
    cross-entropy of the matching head over the positives (label 1) and those negatives (label 0).
    Items whose batch holds no negative only contribute their positive pair.
    """
    positives = same_group(groups, groups)
    neg_text = sample_negatives(similarity, positives, generator)
    neg_image = sample_negatives(similarity.T, positives, generator)
    has_text, has_image = neg_text >= 0, neg_image >= 0
    images = torch.cat([vision, vision[has_text], vision[neg_image[has_image]]])
    ids = torch.cat([input_ids, input_ids[neg_text[has_text]], input_ids[has_image]])
    mask = torch.cat([attention_mask, attention_mask[neg_text[has_text]], attention_mask[has_image]])
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
    labels[: vision.shape[0]] = 1
    return F.cross_entropy(retrieval.itm_logits(model, images, ids, mask), labels)
