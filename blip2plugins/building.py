"""Build small BLIP-2 models from scratch: a byte-level BPE tokenizer, a processor and a model.

Used for the bundled demo model and for the tiny models the tests build in-process. Both language
model families of the real checkpoints are supported: OPT (decoder-only) and T5 (encoder-decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    T5Config,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

Family = Literal["opt", "t5"]
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a small BLIP-2 model.

    ``hidden`` is the width of the Q-Former and the language model, ``layers`` their depth; the
    vision encoder has ``vision_hidden`` width and ``vision_layers`` depth (default: the same).
    """

    image_size: int = 32
    patch_size: int = 8
    hidden: int = 32
    layers: int = 1
    heads: int = 2
    num_query_tokens: int = 4
    max_positions: int = 128
    vision_layers: int | None = None
    vision_hidden: int | None = None


def train_tokenizer(corpus: Iterable[str], family: Family, *, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus``, with the special tokens of ``family``.

    Byte-level, like GPT-2's, so any text (also words never seen in the corpus) is representable.
    OPT prepends ``</s>`` as BOS; T5 appends ``</s>`` as EOS and has no BOS. Padding is on the left.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    eos_id = tok.token_to_id(EOS)
    template = f"{EOS} $A" if family == "opt" else f"$A {EOS}"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(EOS, eos_id)])
    kwargs = {"bos_token": EOS} if family == "opt" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left", **kwargs
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: ModelSpec) -> Blip2Processor:
    """A processor whose image size and query count match ``spec`` (it adds the ``<image>`` token)."""
    images = BlipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})
    return Blip2Processor(images, tokenizer, num_query_tokens=spec.num_query_tokens)


def _vision_and_qformer(processor: Blip2Processor, spec: ModelSpec) -> tuple[Blip2VisionConfig, Blip2QFormerConfig]:
    tokenizer = processor.tokenizer
    ffn = spec.hidden * 4
    vision_width = spec.vision_hidden or spec.hidden
    vision = Blip2VisionConfig(
        hidden_size=vision_width, intermediate_size=vision_width * 4, num_hidden_layers=spec.vision_layers or spec.layers,
        num_attention_heads=spec.heads, image_size=spec.image_size, patch_size=spec.patch_size,
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=spec.hidden, intermediate_size=ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, encoder_hidden_size=vision_width, vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=spec.max_positions, use_qformer_text_input=True,
    )
    return vision, qformer


def build_model(processor: Blip2Processor, family: Family, spec: ModelSpec, *, seed: int = 0) -> Blip2ForConditionalGeneration:
    """A randomly initialised BLIP-2 sized by ``spec``, with a retrieval-ready Q-Former."""
    tokenizer = processor.tokenizer
    vocab = len(tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ffn = spec.hidden * 4
    vision, qformer = _vision_and_qformer(processor, spec)
    if family == "opt":
        text = OPTConfig(
            vocab_size=vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads, ffn_dim=ffn, word_embed_proj_dim=spec.hidden,
            max_position_embeddings=spec.max_positions, pad_token_id=pad, bos_token_id=eos,
            eos_token_id=eos, dropout=0.0, attention_dropout=0.0,
        )
    else:
        text = T5Config(
            vocab_size=vocab, d_model=spec.hidden, d_kv=spec.hidden // spec.heads, d_ff=ffn,
            num_layers=spec.layers, num_decoder_layers=spec.layers, num_heads=spec.heads,
            pad_token_id=pad, eos_token_id=eos, bos_token_id=pad, decoder_start_token_id=pad,
            dropout_rate=0.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        )
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    if family == "opt":
        model.generation_config.bos_token_id = eos
    else:
        model.generation_config.decoder_start_token_id = pad
    return model.eval()


def build_retrieval_model(processor: Blip2Processor, spec: ModelSpec, *, embed_dim: int | None = None,
                          seed: int = 0) -> Blip2ForImageTextRetrieval:
    """A randomly initialised BLIP-2 retrieval model (ViT, Q-Former with text input, ITC projections and ITM head)
    sized by ``spec``; its Q-Former reads text with ``processor``'s tokenizer. ``embed_dim`` is the
    ITC embedding size (default: ``spec.hidden``)."""
    vision, qformer = _vision_and_qformer(processor, spec)
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), num_query_tokens=spec.num_query_tokens,
        image_text_hidden_size=embed_dim or spec.hidden,
        image_token_index=processor.tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    return model.eval()


def build(corpus: Iterable[str], family: Family, spec: ModelSpec = ModelSpec(), *, vocab_size: int = 400,
          seed: int = 0) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    """Tokenizer, processor and model in one call: ``model, processor = build(corpus, "opt")``."""
    processor = build_processor(train_tokenizer(corpus, family, vocab_size=vocab_size), spec)
    return build_model(processor, family, spec, seed=seed), processor
