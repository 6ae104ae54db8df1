"""Retrieval on the host: ITC, ITM and embeddings equal the library's Blip2ForImageTextRetrieval; capabilities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Processor

from blip2plugins import Host, models
from blip2plugins.errors import ImageError, ModelLoadError, OptionError
from blip2plugins.presets import DEMO, ITM_VIT_G

TEXTS = ["a red circle and a blue square", "a green triangle", "the dog runs in the park", "a photo of a cat"]


def _images() -> list[Image.Image]:
    out = []
    for i, colour in enumerate(["red", "blue", "green", "yellow", "white"]):
        image = Image.new("RGB", (50 + 7 * i, 40), "gray")
        ImageDraw.Draw(image).ellipse((5, 5, 30, 30), fill=colour)
        out.append(image)
    return out


@pytest.fixture(scope="module")
def host(tiny_retrieval: Path):
    with Host.load(str(tiny_retrieval), max_batch_size=3) as h:
        yield h


@pytest.fixture(scope="module")
def reference(tiny_retrieval: Path):
    """The library's own model and processor (right padding: the [CLS] output is read at position 0)."""
    processor = Blip2Processor.from_pretrained(tiny_retrieval)
    processor.tokenizer.padding_side = "right"
    return Blip2ForImageTextRetrieval.from_pretrained(tiny_retrieval).eval(), processor


def _library(reference, images, texts, itm: bool) -> torch.Tensor:
    model, processor = reference
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs, use_image_text_matching_head=itm).logits_per_image


def test_similarity_equals_the_library_itc(host: Host, reference) -> None:
    images = _images()
    got = host.similarity(images, TEXTS)
    assert got.shape == (5, 4)
    assert torch.allclose(got, _library(reference, images, TEXTS, itm=False), atol=1e-5)
    assert bool((got.abs() <= 1 + 1e-6).all())
    assert not torch.allclose(got[0], got[1])  # scores depend on the image


def test_match_equals_the_library_itm(host: Host, reference) -> None:
    images = _images()[:4]
    got = host.match(images, TEXTS)  # paired item by item
    expected = _library(reference, images, TEXTS, itm=True).softmax(dim=-1)[:, 1]
    assert torch.allclose(torch.tensor(got), expected, atol=1e-5)
    one = host.match(images[0], TEXTS)  # one image, many texts: the image is repeated
    assert one[0] == pytest.approx(got[0], abs=1e-6)
    assert host.match(images[0], TEXTS[0]) == pytest.approx(got[0], abs=1e-6)
    many = host.match(images, TEXTS[1])  # many images, one text
    assert many[1] == pytest.approx(got[1], abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in got)


def test_embeddings_are_unit_vectors_and_give_the_itc(host: Host) -> None:
    images = _images()
    embeddings = host.embed_images(images)
    texts = host.embed_texts(TEXTS)
    assert texts.shape == (4, host.embedding_dim)
    assert host.embed_texts(TEXTS[0]).shape == (host.embedding_dim,)
    for e in embeddings:
        assert e.ok and e.queries.shape == (host.num_query_tokens, host.embedding_dim)
        assert torch.allclose(e.queries.norm(dim=-1), torch.ones(host.num_query_tokens), atol=1e-5)
        assert torch.allclose(e.pooled, torch.nn.functional.normalize(e.queries.mean(0), dim=0))
        assert e.model == host.retrieval_name and e.model_version == host.retrieval_version
    best = torch.stack([(e.queries @ texts.T).max(dim=0).values for e in embeddings])
    assert torch.allclose(best, host.similarity(images, TEXTS), atol=1e-6)


def test_results_do_not_depend_on_the_batch(tiny_retrieval: Path, host: Host) -> None:
    images = _images()
    with Host.load(str(tiny_retrieval), max_batch_size=1) as alone:
        assert torch.allclose(alone.similarity(images, TEXTS), host.similarity(images, TEXTS), atol=1e-6)
        assert alone.match(images[:2], TEXTS[:2]) == pytest.approx(host.match(images[:2], TEXTS[:2]), abs=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_retrieval_agrees_with_float32(tiny_retrieval: Path, host: Host, dtype: str) -> None:
    images = _images()[:3]
    with Host.load(str(tiny_retrieval), dtype=dtype) as half:
        assert half.loaded.retrieval.model.vision_model.dtype == getattr(torch, dtype)
        torch.testing.assert_close(half.similarity(images, TEXTS), host.similarity(images, TEXTS), atol=0.03, rtol=0)
        assert half.match(images, TEXTS[:3]) == pytest.approx(host.match(images, TEXTS[:3]), abs=0.03)
        embedding = half.embed_images(images[0])
        assert embedding.pooled.dtype == torch.float32 and half.embed_texts(TEXTS).dtype == torch.float32


def test_a_bad_image_fails_alone_in_a_list(host: Host, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    images = [_images()[0], str(broken), str(tmp_path / "missing.png"), _images()[1]]
    embeddings = host.embed_images(images)
    assert [e.ok for e in embeddings] == [True, False, False, True]
    assert "broken.png" in embeddings[1].error and embeddings[1].source == str(broken)
    assert "missing.png" in embeddings[2].error
    assert torch.equal(embeddings[3].queries, host.embed_images(_images()[1]).queries)
    with pytest.raises(ImageError, match="broken.png"):
        host.embed_images(str(broken))
    with pytest.raises(ImageError, match="missing.png"):
        host.match(str(tmp_path / "missing.png"), "a dog")
    with pytest.raises(ImageError, match="broken.png: not an image"):
        host.similarity([_images()[0], str(broken)], TEXTS)


def test_iter_embeddings_reads_at_most_three_chunks_ahead(host: Host) -> None:
    pulled = []

    def images():
        for i, image in enumerate(_images() * 2):  # 10 images, chunks of 3
            pulled.append(i)
            yield image

    embeddings = host.iter_embeddings(images())
    first = next(embeddings)
    assert len(pulled) == 9, "chunk 0 is returned once chunk 1 is queued and chunk 2 loading, no later"
    got = [first, *embeddings]
    assert len(got) == 10 and len(pulled) == 10
    expected = host.embed_images(_images())
    for a, b in zip(got, expected * 2):
        assert torch.equal(a.queries, b.queries)


def test_bad_texts_and_shapes_are_refused(host: Host) -> None:
    with pytest.raises(OptionError, match="2 texts for 3 images"):
        host.match(_images()[:3], TEXTS[:2])
    with pytest.raises(OptionError, match="a text is empty"):
        host.embed_texts(["a dog", "  "])
    with pytest.raises(OptionError, match="a text is empty"):
        host.match(_images()[0], [""])
    with pytest.raises(OptionError, match=r"a text 'a\\udcff' is not valid UTF-8"):
        host.match(_images()[0], [b"a\xff".decode("utf-8", "surrogateescape")])
    with pytest.raises(OptionError, match="a text must be a string, got int"):
        host.embed_texts([5])
    assert host.similarity([], TEXTS).shape == (0, 4)


@pytest.mark.parametrize("texts", [5, None, 10**5000, b"abc", {"a": 1}], ids=["int", "none", "huge-int", "bytes", "dict"])
def test_texts_that_are_no_strings_are_one_line(host: Host, texts: object) -> None:
    image = _images()[0]
    for call in (lambda: host.match(image, texts), lambda: host.similarity(image, texts),
                 lambda: host.embed_texts(texts), lambda: host.match(image, [texts])):
        with pytest.raises(OptionError, match="must be a string") as info:
            call()
        assert len(str(info.value)) < 150 and "\n" not in str(info.value)
    assert host.match(image, (text for text in TEXTS[:2])) == host.match(image, TEXTS[:2])  # any iterable of texts


@pytest.mark.parametrize("images", [5, None, "a.png", Path("a.png")], ids=["int", "none", "str", "path"])
def test_iter_embeddings_takes_an_iterable_of_images(host: Host, images: object) -> None:
    with pytest.raises(OptionError, match="iter_embeddings takes an iterable of images"):
        host.iter_embeddings(images)  # type: ignore[arg-type]


def test_a_retrieval_checkpoint_does_not_caption(host: Host) -> None:
    assert host.tasks == ("match", "similarity", "embed")
    with pytest.raises(ModelLoadError, match="retrieval checkpoint without a language model.*not caption"):
        host.caption(_images()[0])
    with pytest.raises(ModelLoadError, match="not chat"):
        host.chat(_images()[0])


def test_a_captioning_model_with_a_retrieval_companion(tiny_opt: Path, tiny_retrieval: Path, host: Host) -> None:
    with Host.load(str(tiny_opt), retrieval=str(tiny_retrieval)) as both:
        assert both.tasks == ("caption", "ask", "chat", "match", "similarity", "embed")
        assert both.caption(_images()[0]).ok
        assert torch.allclose(both.similarity(_images(), TEXTS), host.similarity(_images(), TEXTS), atol=1e-6)
        assert both.retrieval_version == host.retrieval_version != both.model_version
    with Host.load(str(tiny_opt)) as alone:
        with pytest.raises(ModelLoadError, match="no retrieval model, so it cannot match"):
            alone.match(_images()[0], "a dog")
        with pytest.raises(ModelLoadError, match="cannot embed"):
            _ = alone.embedding_dim
    with pytest.raises(ModelLoadError, match="not a retrieval checkpoint"):
        models.load(str(tiny_opt), retrieval=str(tiny_opt))
    with pytest.raises(ModelLoadError, match="has none"):
        models.load(str(tiny_retrieval), quantize="8bit")


def test_presets_declare_their_tasks() -> None:
    assert DEMO.tasks == ("caption", "ask", "chat", "match", "similarity", "embed")
    assert ITM_VIT_G.tasks == ("match", "similarity", "embed") and ITM_VIT_G.source == "Salesforce/blip2-itm-vit-g"
    with pytest.raises(ValueError, match="kind"):
        type(DEMO)(name="x", source="y", kind="detector")


def test_a_companion_with_the_same_vision_encoder_shares_it(tiny_opt: Path, tiny_retrieval: Path, tmp_path: Path) -> None:
    from blip2plugins import artifacts
    from blip2plugins.demo import MODEL_DIR
    from blip2plugins.training import TrainConfig, apply_method

    texts = ["a red circle", "a blue square and a green triangle"]
    with Host.load("demo-retrieval") as alone:
        expected = alone.similarity(_images(), texts)
    with Host.load(str(tiny_opt), retrieval=str(tiny_retrieval)) as different:  # other weights: not shared
        assert different.loaded.retrieval.model.vision_model is not different.loaded.model.vision_model
    with Host.load("demo") as host:
        generation, head = host.loaded.model, host.loaded.retrieval.model
        assert head.vision_model is generation.vision_model  # the demo head was trained with the ViT frozen
        assert torch.allclose(host.similarity(_images(), texts), expected, atol=1e-6)

        lm_only = apply_method(Blip2ForConditionalGeneration.from_pretrained(MODEL_DIR), TrainConfig(method="lora"))
        host.use_adapter(str(artifacts.save(lm_only, "lora", tmp_path / "lora", base_model="demo")))
        assert head.vision_model is generation.vision_model  # LoRA on the language model: still shared

        vision = Blip2ForConditionalGeneration.from_pretrained(MODEL_DIR)
        for name, param in vision.named_parameters():
            param.requires_grad = name.startswith("vision_model.")
        with torch.no_grad():
            vision.vision_model.post_layernorm.weight.mul_(-2)
        host.use_adapter(str(artifacts.save(vision, "full", tmp_path / "vision", base_model="demo")))
        assert head.vision_model is not generation.vision_model  # unshared before the adapter changed it
        assert torch.allclose(host.similarity(_images(), texts), expected, atol=1e-6)
        host.use_adapter(None)
        assert torch.allclose(host.similarity(_images(), texts), expected, atol=1e-6)
