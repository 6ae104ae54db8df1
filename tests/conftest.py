"""Fixtures shared by every test: tiny BLIP-2 checkpoints of both LM families, built in-process.

Tests see the core's default plugins only, whatever else is installed in the environment: an
installed integration or third-party plugin must not change what they test, nor the ``blip2``
processes they start (``BLIP2_PLUGINS=""``, inherited). A test that needs entry-point plugins asks
for them with ``@pytest.mark.plugins("label-studio", ...)``; the tests of ``adapters/`` ask for their
integration (:data:`INTEGRATION_TESTS`).
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch

from blip2plugins import plugins
from blip2plugins.building import ModelSpec, build

torch.set_num_threads(2)

os.environ[plugins.ENV_ALLOW] = ""
os.environ.pop(plugins.ENV_BLOCK, None)
#: Test folders whose every test loads an integration, by folder (relative to ``tests/``).
INTEGRATION_TESTS = {"adapters/label_studio": ("label-studio",), "adapters/langchain": ("langchain",),
                     "adapters/ray": ("ray",)}
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for folder, names in INTEGRATION_TESTS.items():
            if (HERE / folder) in item.path.parents:
                item.add_marker(pytest.mark.plugins(*names))


@pytest.fixture(autouse=True)
def entry_point_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Loads the entry-point plugins a ``plugins`` marker names, for that test only."""
    marker = request.node.get_closest_marker("plugins")
    if marker is None:
        yield
        return
    monkeypatch.setenv(plugins.ENV_ALLOW, ",".join(marker.args))
    plugins.reset()
    yield
    plugins.reset()

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
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """A freshly built plugin manager, without allow/block lists in the environment, that sees no
    installed distribution's entry points but those whose names the test adds to the returned set;
    none left behind."""
    visible: set[str] = set()

    def entry_points(**selection: Any) -> metadata.EntryPoints:
        return metadata.EntryPoints(point for point in metadata.entry_points(**selection)
                                    if point.dist is not None and point.dist.name in visible)

    monkeypatch.setattr(plugins, "metadata", SimpleNamespace(entry_points=entry_points))
    monkeypatch.delenv(plugins.ENV_ALLOW, raising=False)
    monkeypatch.delenv(plugins.ENV_BLOCK, raising=False)
    plugins.reset()
    yield visible
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
