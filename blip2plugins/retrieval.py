"""Image-text matching (ITM), contrastive similarity (ITC) and embeddings of a BLIP-2 retrieval model.

The functions take a :class:`~transformers.Blip2ForImageTextRetrieval` and compute exactly what its
``forward`` computes, in pieces that can be batched, cached and trained separately:

- :func:`image_embeddings`: the Q-Former's query outputs, projected and L2-normalised, ``(B, Q, D)``;
- :func:`text_embeddings`: the Q-Former's text ([CLS], position 0) output, projected and normalised, ``(B, D)``;
- :func:`itc`: the similarity matrix, the *maximum over query tokens* of the cosine, in [-1, 1]. It is
  not a probability: scores of different texts are comparable, but 0.4 does not mean "40 % likely";
- :func:`itm_logits`: the matching head's ``(no match, match)`` logits for image-text pairs; the softmax
  of the second is the match probability.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import Blip2ForImageTextRetrieval


def vision_states(model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision encoder's last hidden states ``(B, patches + 1, vision hidden)``: what the Q-Former attends to."""
    pixel_values = pixel_values.to(model.device, model.vision_model.dtype)
    return model.vision_model(pixel_values=pixel_values).last_hidden_state


def query_states(model: Blip2ForImageTextRetrieval, vision: torch.Tensor) -> torch.Tensor:
    """The Q-Former's query outputs ``(B, Q, H)`` for vision states from :func:`vision_states`."""
    queries = model.query_tokens.expand(vision.shape[0], -1, -1)
    mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)
    return model.qformer(query_embeds=queries, encoder_hidden_states=vision, encoder_attention_mask=mask).last_hidden_state


def image_embeddings(model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor) -> torch.Tensor:
    """Per-query ITC embeddings ``(B, Q, D)``, unit length."""
    states = query_states(model, vision_states(model, pixel_values))
    return project_images(model, states)


def project_images(model: Blip2ForImageTextRetrieval, query_outputs: torch.Tensor) -> torch.Tensor:
    """Query outputs ``(B, Q, H)`` -> unit-length ITC embeddings ``(B, Q, D)``."""
    states = query_outputs.to(model.vision_projection.weight.dtype)
    return F.normalize(model.vision_projection(states), dim=-1)


def text_states(model: Blip2ForImageTextRetrieval, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The Q-Former's outputs ``(B, T, H)`` for text alone (no queries, no image)."""
    embeds = model.embeddings(input_ids=input_ids.to(model.device))
    return model.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask.to(model.device)).last_hidden_state


def text_embeddings(model: Blip2ForImageTextRetrieval, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """ITC embeddings of texts ``(B, D)``, unit length: the projected output at position 0 ([CLS] / BOS).

    ``input_ids`` must be right-padded (position 0 is the first token), without image tokens.
    """
    states = text_states(model, input_ids, attention_mask)[:, 0, :]
    return F.normalize(model.text_projection(states.to(model.text_projection.weight.dtype)), dim=-1)


def itc(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Similarity ``(I, T)`` of per-query image embeddings ``(I, Q, D)`` and text embeddings ``(T, D)``:
    the maximum over query tokens of the cosine."""
    return torch.einsum("iqd,td->iqt", image_embeds, text_embeds.to(image_embeds.dtype)).amax(dim=1)


def itm_logits(model: Blip2ForImageTextRetrieval, vision: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """``(no match, match)`` logits ``(B, 2)`` of image ``i`` with text ``i``, from :func:`vision_states`.

    The queries and the text run through the Q-Former together (the text attends to the queries,
    which attend to the image); the head's outputs over the query positions are averaged.
    """
    queries = model.query_tokens.expand(vision.shape[0], -1, -1)
    attention_mask = attention_mask.to(vision.device)
    query_mask = torch.ones(queries.shape[:-1], dtype=attention_mask.dtype, device=vision.device)
    embeds = model.embeddings(input_ids=input_ids.to(vision.device), query_embeds=queries)
    image_mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device)
    states = model.qformer(query_embeds=embeds, query_length=queries.shape[1],
                           attention_mask=torch.cat([query_mask, attention_mask], dim=1),
                           encoder_hidden_states=vision, encoder_attention_mask=image_mask).last_hidden_state
    states = states[:, : queries.shape[1], :].to(model.itm_head.weight.dtype)
    return model.itm_head(states).mean(dim=1)


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and attention mask of ``texts`` for the Q-Former (at most ``max_length`` tokens)."""
    encoded = tokenizer(texts, padding=True, padding_side="right", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return encoded.input_ids, encoded.attention_mask
