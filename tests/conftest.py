"""Fixtures shared by every test: tiny BLIP-2 checkpoints of both LM families, built in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from blip2plugins import plugins
from blip2plugins.building import ModelSpec, build

torch.set_num_threads(2)

CORPUS = [
    "a red circle and a blue square", "a green triangle", "a yellow square and a red triangle",
    "Question: what color is the circle? Answer: red.", "Question: how many shapes? Short answer: two",
    "Question: is there a triangle? Answer: yes", "a photo of a cat on a sofa", "the dog runs in the park",
] * 10
TINY = ModelSpec(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, num_query_tokens=4, max_positions=128)


def make_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    """Save a tiny, randomly weighted BLIP-2 of ``family`` (with processor) into ``folder``."""
    model, processor = build(CORPUS, family, TINY, seed=seed)  # type: ignore[arg-type]
    with torch.no_grad():  # large random weights: outputs that depend strongly on image and prompt
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny OPT-family BLIP-2 checkpoint (retrieval-ready Q-Former)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny-opt"), "opt")


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny T5-family BLIP-2 checkpoint (retrieval-ready Q-Former)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny-t5"), "t5")


@pytest.fixture(scope="session", params=["opt", "t5"])
def tiny_checkpoint(request: pytest.FixtureRequest) -> Path:
    """Each tiny checkpoint in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A freshly built plugin manager, without allow/block lists from the environment; none left behind."""
    monkeypatch.delenv(plugins.ENV_ALLOW, raising=False)
    monkeypatch.delenv(plugins.ENV_BLOCK, raising=False)
    plugins.reset()
    yield
    plugins.reset()


def make_retrieval_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Save a tiny, randomly weighted BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``, with processor)."""
    from blip2plugins.building import build_processor, build_retrieval_model, train_tokenizer

    processor = build_processor(train_tokenizer(CORPUS, "opt"), TINY)
    model = build_retrieval_model(processor, TINY, embed_dim=16, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # large random weights: scores that depend strongly on image and text
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_retrieval(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny retrieval checkpoint (``Blip2ForImageTextRetrieval``): loads alone or beside a tiny model."""
    return make_retrieval_checkpoint(tmp_path_factory.mktemp("tiny-retrieval"))
