"""The retrieval tools: match_image_text and search_images on tiny retrieval models, a real FAISS index,
errors an agent can read, the toolkit's choice of tools, and an agent that searches and then looks."""

from __future__ import annotations

import base64
import dataclasses
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from PIL import Image, ImageDraw

from blip2plugins import Host
from blip2plugins.errors import Blip2Error
from blip2plugins.index import ImageIndex, build_index, search
from blip2plugins_langchain import Blip2Toolkit, CaptionImageTool
from blip2plugins_langchain.tools import MatchImageTextTool, SearchImagesTool

TEXTS = ["a red circle", "a blue square and a green triangle", "a photo of a cat on a sofa"]
QUERY = "a red circle and a blue square"


def call(name: str, args: dict[str, Any], call_id: str = "1") -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


@pytest.fixture(scope="module")
def host(tiny_opt: Path, tiny_retrieval: Path) -> Iterator[Host]:
    """A captioning model with a retrieval companion: every tool works on it."""
    with Host.load(str(tiny_opt), retrieval=str(tiny_retrieval)) as h:
        yield h


@pytest.fixture(scope="module")
def retrieval_only(tiny_retrieval: Path) -> Iterator[Host]:
    with Host.load(str(tiny_retrieval)) as h:
        yield h


@pytest.fixture(scope="module")
def no_retrieval(tiny_opt: Path) -> Iterator[Host]:
    with Host.load(str(tiny_opt), retrieval=False) as h:
        yield h


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Five PNG files of different shapes and colours."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (colour, background) in enumerate([("red", "white"), ("blue", "gray"), ("green", "black"),
                                              ("yellow", "navy"), ("purple", "white")]):
        image = Image.new("RGB", (48 + 4 * i, 48), background)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)((4 + 3 * i, 6, 30 + 2 * i, 40), fill=colour)
        path = folder / f"{colour}.png"
        image.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def index_file(host: Host, images: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    index, report = build_index(host, images, progress=False)
    assert not report.failed and len(index) == len(images)
    path = tmp_path_factory.mktemp("index") / "images.idx"
    index.save(path)
    return path


# -- match_image_text -------------------------------------------------------------------------------


@pytest.mark.parametrize("texts", [TEXTS, TEXTS[::-1]], ids=["forward", "reversed"])  # the best is not always first
def test_match_gives_the_hosts_itm_probabilities_and_itc_scores(host: Host, images: list[str], texts: list[str]) -> None:
    message = MatchImageTextTool(host=host).invoke(call("match_image_text", {"image": images[0], "texts": texts}))
    probabilities = host.match(images[0], texts)
    scores = host.similarity(images[0], texts)[0].tolist()
    artifact = message.artifact
    assert artifact["texts"] == texts
    assert artifact["itm"] == pytest.approx(probabilities, abs=1e-6)
    assert artifact["itc"] == pytest.approx(scores, abs=1e-6)
    best = texts[max(range(len(texts)), key=probabilities.__getitem__)]
    assert artifact["best"] == best
    assert (artifact["model"], artifact["model_version"]) == (host.retrieval_name, host.retrieval_version)
    for text, probability in zip(texts, probabilities):
        assert f"{text!r}: {probability:.1%}" in message.content
    assert f"Best match: {best!r}" in message.content


def test_match_takes_data_uris(host: Host, images: list[str]) -> None:
    data = "data:image/png;base64," + base64.b64encode(Path(images[1]).read_bytes()).decode()
    message = MatchImageTextTool(host=host).invoke(call("match_image_text", {"image": data, "texts": TEXTS[:2]}))
    assert message.artifact["itm"] == pytest.approx(host.match(images[1], TEXTS[:2]), abs=1e-6)


def test_match_errors_come_back_as_tool_messages(host: Host, no_retrieval: Host, images: list[str]) -> None:
    tool = MatchImageTextTool(host=host)
    missing = tool.invoke(call("match_image_text", {"image": "/no/such/image.png", "texts": TEXTS}))
    assert missing.status == "error" and "/no/such/image.png" in missing.content
    empty = tool.invoke(call("match_image_text", {"image": images[0], "texts": []}))
    assert empty.status == "error" and "no texts" in empty.content
    blank = tool.invoke(call("match_image_text", {"image": images[0], "texts": ["a cat", " "]}))
    assert blank.status == "error" and "a text is empty" in blank.content
    unable = MatchImageTextTool(host=no_retrieval).invoke(call("match_image_text", {"image": images[0], "texts": TEXTS}))
    assert unable.status == "error" and "no retrieval model" in unable.content


# -- search_images ----------------------------------------------------------------------------------


def test_search_gives_the_index_search_results(host: Host, index_file: Path) -> None:
    message = SearchImagesTool(host=host, index=index_file).invoke(call("search_images", {"query": QUERY, "k": 3}))
    expected = search(host, ImageIndex.load(index_file), QUERY, k=3)
    assert message.artifact["hits"] == [dataclasses.asdict(hit) for hit in expected]
    assert (message.artifact["model"], message.artifact["model_version"]) == (host.retrieval_name, host.retrieval_version)
    listed = re.findall(r"^(\d+)\. (.+) \(similarity (-?[\d.]+)\)$", message.content, re.MULTILINE)
    assert listed == [(str(h.rank), h.source, f"{h.score:.3f}") for h in expected]


def test_search_reranks_with_itm_when_asked(host: Host, index_file: Path) -> None:
    tool = SearchImagesTool(host=host, index=index_file, rerank=True)
    message = tool.invoke(call("search_images", {"query": QUERY, "k": 4}))
    expected = search(host, ImageIndex.load(index_file), QUERY, k=4, rerank=True)
    assert message.artifact["hits"] == [dataclasses.asdict(hit) for hit in expected]
    assert all(h["itm"] is not None for h in message.artifact["hits"])
    assert f"1. {expected[0].source} (match {expected[0].itm:.1%}" in message.content


def test_search_errors_come_back_as_tool_messages(host: Host, retrieval_only: Host, index_file: Path,
                                                  tmp_path: Path) -> None:
    missing = SearchImagesTool(host=host, index=tmp_path / "none.idx").invoke(call("search_images", {"query": QUERY}))
    assert missing.status == "error" and "no such file" in missing.content
    ImageIndex.create(host.retrieval_name, host.retrieval_version, host.embedding_dim, host.num_query_tokens).save(
        tmp_path / "empty.idx")
    empty = SearchImagesTool(host=host, index=tmp_path / "empty.idx").invoke(call("search_images", {"query": QUERY}))
    assert empty.status == "error" and "is empty" in empty.content
    ImageIndex.create("other", "other@0123", host.embedding_dim, host.num_query_tokens).save(tmp_path / "other.idx")
    other = SearchImagesTool(host=host, index=tmp_path / "other.idx").invoke(call("search_images", {"query": QUERY}))
    assert other.status == "error" and "built by model 'other'" in other.content
    tool = SearchImagesTool(host=host, index=index_file)
    blank = tool.invoke(call("search_images", {"query": "  "}))
    assert blank.status == "error" and "query is empty" in blank.content
    zero = tool.invoke(call("search_images", {"query": QUERY, "k": 0}))
    assert zero.status == "error" and "k must be a positive integer" in zero.content
    caption = CaptionImageTool(host=retrieval_only).invoke(call("caption_image", {"image": str(index_file)}))
    assert caption.status == "error" and "without a language model" in caption.content


def test_the_index_loads_once_and_again_when_the_file_changes(host: Host, images: list[str], index_file: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "live.idx"
    path.write_bytes(index_file.read_bytes())
    loads = []
    real_load = ImageIndex.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[ImageIndex], target: Any) -> ImageIndex:
        loads.append(target)
        return real_load(cls, target)

    monkeypatch.setattr(ImageIndex, "load", classmethod(counting_load))
    tool = SearchImagesTool(host=host, index=path)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(tool.invoke({"query": QUERY, "k": 10})))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1 and len(loads) == 1
    assert sorted(re.findall(r"^\d+\. (.+) \(", results[0], re.MULTILINE)) == sorted(images)

    smaller, _ = build_index(host, images[:2], progress=False)
    smaller.save(path)  # what a backend rebuilding the index does: the file is replaced
    message = SearchImagesTool(host=host, index=path).invoke(call("search_images", {"query": QUERY, "k": 10}))
    assert sorted(h["source"] for h in message.artifact["hits"]) == sorted(images[:2]) and len(loads) == 2
    tool.invoke({"query": QUERY})
    assert len(loads) == 2


# -- the toolkit ------------------------------------------------------------------------------------


def names(kit: Blip2Toolkit) -> list[str]:
    return [tool.name for tool in kit.get_tools()]


def test_the_toolkit_offers_what_it_can_without_loading_a_model(host: Host, retrieval_only: Host, no_retrieval: Host,
                                                                index_file: Path) -> None:
    unloadable = "/no/such/model"  # building tools never loads the model: this would fail if it did
    assert names(Blip2Toolkit(model=unloadable)) == ["caption_image", "ask_image", "match_image_text"]
    assert names(Blip2Toolkit(model=unloadable, index=index_file))[-1] == "search_images"
    assert names(Blip2Toolkit(model=unloadable, image_from="conversation")) == [
        "caption_latest_image", "ask_latest_image", "match_latest_image"]
    with pytest.raises(Blip2Error, match="search_images: needs an image index"):
        Blip2Toolkit(model=unloadable, tools=("search_images",)).get_tools()

    assert names(Blip2Toolkit(host=host, index=index_file)) == ["caption_image", "ask_image", "match_image_text",
                                                                "search_images"]
    assert names(Blip2Toolkit(host=no_retrieval, index=index_file)) == ["caption_image", "ask_image"]
    assert names(Blip2Toolkit(host=retrieval_only, index=index_file)) == ["match_image_text", "search_images"]
    with pytest.raises(Blip2Error, match="match_image_text: model .* cannot match"):
        Blip2Toolkit(host=no_retrieval, tools=("match_image_text",)).get_tools()
    search_tool = Blip2Toolkit(host=host, index=index_file, rerank=True, tools=("search_images",)).get_tools()[0]
    assert isinstance(search_tool, SearchImagesTool) and search_tool.rerank and search_tool.index == index_file
    assert set(search_tool.tool_call_schema.model_json_schema()["properties"]) == {"query", "k"}


# -- agents -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rerank", [False, True])
def test_on_the_demo_model_a_scene_is_found_by_its_caption(tmp_path: Path, rerank: bool) -> None:
    from blip2plugins.demo import world

    scenes = [world.make_scene(colours, background=background) for colours, background in [
        ({"circle": "red"}, "white"), ({"square": "blue", "triangle": "yellow"}, "gray"),
        ({"triangle": "green"}, "dark"), ({"circle": "yellow", "square": "green"}, "white"),
        ({"circle": "blue", "square": "red", "triangle": "green"}, "gray"), ({"square": "yellow"}, "dark")]]
    paths = []
    for i, scene in enumerate(scenes):
        paths.append(str(tmp_path / f"scene{i}.png"))
        world.render(scene).save(paths[-1])
    with Host.load("demo") as demo:
        index, report = build_index(demo, paths, progress=False)
        assert not report.failed
        index.save(tmp_path / "scenes.idx")
        tool = SearchImagesTool(host=demo, index=tmp_path / "scenes.idx", rerank=rerank)
        for path, scene in zip(paths, scenes):
            hits = tool.invoke(call("search_images", {"query": world.caption(scene), "k": 3})).artifact["hits"]
            assert hits[0]["source"] == path, world.caption(scene)


class SearchThenCaption(BaseChatModel):
    """A tool-calling stand-in for an LLM: searches, then captions the first image the search lists."""

    @property
    def _llm_type(self) -> str:
        return "search-then-caption"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> SearchThenCaption:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, HumanMessage):
            reply = AIMessage("", tool_calls=[call("search_images", {"query": last.text, "k": 3}, "s")])
        elif isinstance(last, ToolMessage) and last.name == "search_images":
            top = re.search(r"^1\. (.+) \(", last.content, re.MULTILINE)
            assert top, last.content
            reply = AIMessage("", tool_calls=[call("caption_image", {"image": top.group(1)}, "c")])
        else:
            reply = AIMessage(f"The best image shows {last.content}.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def test_an_agent_searches_and_captions_the_top_hit(host: Host, index_file: Path) -> None:
    agent = create_agent(SearchThenCaption(), tools=Blip2Toolkit(host=host, index=index_file).get_tools())
    state = agent.invoke({"messages": [HumanMessage(QUERY)]})
    results = {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}
    top = search(host, ImageIndex.load(index_file), QUERY, k=3)[0].source
    assert results["s"].artifact["hits"][0]["source"] == top
    assert results["c"].status == "success" and results["c"].content == host.caption(top).text
    assert state["messages"][-1].content == f"The best image shows {host.caption(top).text}."


def test_an_agent_matches_texts_against_the_attached_image(host: Host, images: list[str]) -> None:
    script = iter([AIMessage("", tool_calls=[call("match_latest_image", {"texts": TEXTS}, "m")]), AIMessage("done")])

    class Scripted(SearchThenCaption):
        def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                      **kwargs: Any) -> ChatResult:
            return ChatResult(generations=[ChatGeneration(message=next(script))])

    block = {"type": "image", "base64": base64.b64encode(Path(images[2]).read_bytes()).decode(), "mime_type": "image/png"}
    agent = create_agent(Scripted(), tools=Blip2Toolkit(host=host, image_from="conversation").get_tools())
    state = agent.invoke({"messages": [HumanMessage(content=[{"type": "text", "text": "which fits?"}, block])]})
    result = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    assert result.status == "success"
    assert result.artifact["itm"] == pytest.approx(host.match(images[2], TEXTS), abs=1e-6)


# -- LangChain's standard tool suites ---------------------------------------------------------------


class RetrievalToolParams:
    """Constructor arguments that need this module's fixtures: filled in before each test."""

    params: dict[str, Any] = {}

    @pytest.fixture(autouse=True)
    def _fixtures(self, host: Host, images: list[str], index_file: Path) -> None:
        type(self).params = {"host": host, "index": index_file, "image": images[0]}

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {key: self.params[key] for key in ("host", "index")}


class MatchParams(RetrievalToolParams):
    tool_constructor = MatchImageTextTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"image": self.params["image"], "texts": TEXTS}


class SearchParams(RetrievalToolParams):
    tool_constructor = SearchImagesTool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": QUERY, "k": 2}


class TestMatchToolUnit(MatchParams, ToolsUnitTests):
    pass


class TestMatchToolIntegration(MatchParams, ToolsIntegrationTests):
    pass


class TestSearchToolUnit(SearchParams, ToolsUnitTests):
    pass


class TestSearchToolIntegration(SearchParams, ToolsIntegrationTests):
    pass
