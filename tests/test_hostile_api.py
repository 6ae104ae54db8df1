"""Hostile inputs through the Python API (``Host``): images, texts, generation options, adapters and
models. Each call returns (per-item errors allowed) or raises a ``Blip2Error`` with a one-line message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from blip2plugins.host import Host

from hostile import checks, corpus, fixtures

pytestmark = pytest.mark.timeout(90)

GOOD = corpus.scene_png(3)


@pytest.fixture(scope="module")
def host() -> Host:
    return fixtures.host()


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.image_folder(tmp_path_factory.mktemp("hostile-images"))


def _all_tasks(host: Host, image: object, what: str) -> None:
    single = checks.api(lambda: host.caption(image), f"caption({what})")
    checks.results(single, f"caption({what})")
    batch = checks.api(lambda: host.caption([GOOD, image, GOOD]), f"caption([good, {what}, good])")
    assert isinstance(batch, list), f"caption list with {what}: {checks.short(batch)}"
    checks.results(batch, f"caption list with {what}")
    assert batch[0].ok and batch[2].ok, f"a bad image ({what}) sank the good items of its batch: {batch}"
    checks.results(checks.api(lambda: host.ask([image], "how many shapes?"), f"ask({what})"), f"ask({what})")
    embedded = checks.api(lambda: host.embed_images([GOOD, image]), f"embed_images([good, {what}])")
    if isinstance(embedded, list):
        assert embedded[0].ok, f"embed_images: a bad image ({what}) sank a good one"
        checks.results(embedded, f"embed_images({what})")
    checks.api(lambda: host.match(image, ["a red circle", "a green square"]), f"match({what})")


@pytest.mark.parametrize("case", corpus.image_objects(), ids=lambda c: c.id)
def test_image_objects(host: Host, case: corpus.Case) -> None:
    _all_tasks(host, case.value, case.id)


FILE_IDS = [c.id for c in corpus.image_bytes()] + [
    "good", "png-named-jpg", "png-named-txt", "png-no-extension", "newline-name", "leading-dash-name", "non-utf8-name",
    "directory", "fifo", "symlink-dev-zero", "dangling-symlink", "symlink-loop"]


@pytest.mark.parametrize("key", FILE_IDS)
def test_image_files(host: Host, image_paths: dict[str, Path], key: str) -> None:
    path = image_paths[key]
    _all_tasks(host, str(path), f"file {key}")
    checks.api(lambda: host.caption(path), f"caption(Path {key})")


@pytest.mark.parametrize("case", corpus.texts(), ids=lambda c: c.id)
def test_texts(host: Host, case: corpus.Case) -> None:
    text = case.value
    checks.results(checks.api(lambda: host.caption(GOOD, prompt=text), "caption(prompt=...)"), "caption prompt")
    checks.results(checks.api(lambda: host.caption([GOOD, GOOD], prompt=["a", text]), "caption(prompt list)"),
                   "caption prompt list")
    checks.results(checks.api(lambda: host.ask(GOOD, text), "ask(question)"), "ask")
    checks.results(checks.api(lambda: host.ask(GOOD, ["how many shapes?", text]), "ask(question list)"), "ask list")
    checks.api(lambda: host.match(GOOD, text), "match(text)")
    checks.api(lambda: host.embed_texts(text), "embed_texts(text)")
    checks.api(lambda: host.similarity(GOOD, [text]), "similarity(texts)")
    chat = checks.api(lambda: host.chat(GOOD), "chat()")
    checks.api(lambda: chat.ask(text), "chat.ask(text)")
    checks.api(lambda: host.chat(GOOD, system=text), "chat(system=text)")


def _option_cases() -> list:
    cases = []
    for name in corpus.GENERATION_OPTIONS:
        for number in corpus.bad_numbers():
            cases.append(pytest.param(name, number.value, id=f"{name}={number.id}"))
    for value, label in ((None, "none"), ("yes", "str"), (1, "int"), (float("nan"), "nan")):
        cases.append(pytest.param("do_sample", value, id=f"do_sample={label}"))
    for value, label in ((5, "int"), ([None], "list-none"), ([""], "empty-string"), ("\ud800", "lone-surrogate"),
                         (["a"] * 10000, "10k-strings"), ("x" * 100000, "huge")):
        cases.append(pytest.param("stop", value, id=f"stop={label}"))
    cases.append(pytest.param("unknown_option", 1, id="unknown-option"))
    return cases


@pytest.mark.parametrize(("name", "value"), _option_cases())
def test_generation_options(host: Host, name: str, value: object) -> None:
    options = {name: value}
    if name in corpus.SAMPLING_ONLY:
        options["do_sample"] = True
    what = f"caption({name}={checks.short(value, 40)})"
    checks.results(checks.api(lambda: host.caption(GOOD, **options), what), what)
    checks.api(lambda: host.options(**options), f"options({name}=...)")


def _adapter_folder(base: Path, case: str) -> Path:
    store, version = fixtures.copy_store(base / "store")
    folder = base / "adapter"
    shutil.copytree(version, folder)
    (folder / "version.json").unlink()
    return folder


ADAPTER_REFS = ["", "@", "hostile@", "@v0001", "hostile@v0", "hostile@-1", "hostile@nan", "hostile@v99999",
                "hostile@" + "1" * 4400, "base@" + "1" * 4400, "a" * 300, "Hostile", "hostile\x00", "\ud800",
                "../../etc", "/dev/null", "/", "~nobody-such-user/x", "hostile@v0001@v0002", " hostile "]


@pytest.mark.parametrize("ref", ADAPTER_REFS, ids=lambda r: checks.short(r, 30))
def test_use_adapter_refs(host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ref: str) -> None:
    store, _ = fixtures.copy_store(tmp_path / "store")
    monkeypatch.setenv("BLIP2_ADAPTER_STORE", str(store))
    before = host.model_version
    checks.api(lambda: host.use_adapter(ref), f"use_adapter({checks.short(ref, 40)})")
    host.use_adapter(None)
    assert host.model_version == before
    assert host.caption(GOOD).ok


ADAPTER_FILES = {
    "adapter_config.json": lambda: corpus.json_tamperings({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                           "target_modules": "x", "base_model_name_or_path": "demo"}),
    "adapter_model.safetensors": None,  # filled from the real file
}


CONFIG_FIELDS = {
    "r": [(-1, "neg"), (0, "zero"), ("8", "str"), (10**4400, "4400-digit"), (2**40, "2**40")],
    "lora_alpha": [(float("nan"), "nan")], "peft_type": [("PROMPT_TUNING", "prompt"), (None, "null")],
    "target_modules": [("(", "bad-regex"), (["no_such_module"], "unknown"), ([], "empty")],
    "lora_dropout": [(float("inf"), "inf"), (2.0, "two")],
}


def _adapter_cases() -> list:
    cases = [pytest.param("adapter_config.json", c, id=f"config-{c.id}") for c in ADAPTER_FILES["adapter_config.json"]()]
    cases += [pytest.param("adapter_config.json", ("field", key, value), id=f"config-{key}={label}")
              for key, values in CONFIG_FIELDS.items() for value, label in values]
    cases += [pytest.param("adapter_model.safetensors", name, id=f"weights-{name}") for name in corpus.SAFETENSORS_IDS]
    cases += [pytest.param("extra-file", "unknown-file", id="unknown-extra-file"),
              pytest.param("remove", "adapter_config.json", id="missing-config"),
              pytest.param("remove", "adapter_model.safetensors", id="missing-weights"),
              pytest.param("remove", "*", id="empty-folder")]
    return cases


@pytest.mark.parametrize(("target", "case"), _adapter_cases())
def test_damaged_adapter_folder(host: Host, tmp_path: Path, target: str, case: object) -> None:
    folder = _adapter_folder(tmp_path, "x")
    if isinstance(case, tuple):
        _, key, value = case
        config = json.loads((folder / target).read_text())
        config[key] = "@@VALUE@@"
        raw = json.dumps(config).replace('"@@VALUE@@"', ("1" * 4401 if value > 10**4000 else str(value)) if isinstance(value, int) and not isinstance(value, bool)
                                         else json.dumps(value))
        (folder / target).write_text(raw)
    elif target == "adapter_config.json":
        corpus.apply(case, folder / target)  # type: ignore[arg-type]
    elif target == "adapter_model.safetensors":
        real = (folder / target).read_bytes()
        damaged = {c.id: c for c in corpus.safetensors_tamperings(real)}[case]  # type: ignore[index]
        corpus.apply(damaged, folder / target)
    elif target == "extra-file":
        (folder / "qformer.safetensors").write_bytes(b"junk")
    elif target == "remove":
        for path in folder.iterdir() if case == "*" else [folder / str(case)]:
            path.unlink()
    before = host.model_version
    checks.api(lambda: host.use_adapter(str(folder)), f"use_adapter(damaged {target}: {checks.short(case, 40)})")
    # whatever happened, the host must still serve: the base model, or a whole adapter
    result = host.caption(GOOD)
    assert result.ok, f"after a damaged adapter ({target}), captions fail: {result.error}"
    host.use_adapter(None)
    assert host.model_version == before
    assert host.caption(GOOD).text == fixtures.host().caption(GOOD).text


MODEL_NAMES = ["", " ", "\x00", "\ud800", "a" * 5000, "../../..", "/dev/null", "/dev/zero", "/", "file:///etc",
               "http://127.0.0.1:99999/model", "Salesforce/" + "x" * 300, "demo@v1", "DEMO"]


@pytest.mark.parametrize("name", MODEL_NAMES, ids=lambda r: checks.short(r, 30))
def test_load_bad_model_names(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = checks.api(lambda: Host.load(name, device="cpu"), f"Host.load({checks.short(name, 40)})")
    if isinstance(loaded, Host):
        loaded.close()


LOAD_ARGS = [{"device": "cuda:99"}, {"device": "nan"}, {"device": ""}, {"device": "cpu:-1"}, {"dtype": "float8"},
             {"dtype": None}, {"quantize": "3bit"}, {"max_batch_size": 0}, {"max_batch_size": -1},
             {"max_batch_size": True}, {"max_batch_size": 10**5000}, {"max_wait": float("nan")}, {"max_wait": -1.0},
             {"loader_threads": 0}, {"loader_threads": -3}, {"adapter": "\x00"}, {"retrieval": "/dev/null"}]


@pytest.mark.parametrize("kwargs", LOAD_ARGS, ids=lambda k: checks.short(k, 40))
def test_load_bad_arguments(kwargs: dict) -> None:
    loaded = checks.api(lambda: Host.load("demo", **{"device": "cpu", **kwargs}), f"Host.load(demo, {checks.short(kwargs)})")
    if isinstance(loaded, Host):
        try:
            checks.results(checks.api(lambda: loaded.caption(GOOD), "caption on it"), "caption on it")
        finally:
            loaded.close()


def _checkpoint_cases() -> list:
    config_edits = {
        "vision-image-size-0": ("vision_config", {"image_size": 0}),
        "vision-patch-size-0": ("vision_config", {"patch_size": 0}),
        "vision-patch-not-dividing-image": ("vision_config", {"patch_size": 48}),
        "vision-config-string": ("vision_config", "nope"),
        "vision-hidden-negative": ("vision_config", {"hidden_size": -64}),
        "num-query-tokens-0": ("num_query_tokens", 0),
        "num-query-tokens-str": ("num_query_tokens", "8"),
        "text-config-null": ("text_config", None),
        "model-type-unknown": ("model_type", "no-such-model"),
        "image-token-out-of-vocab": ("image_token_index", 10**6),
        "text-vocab-0": ("text_config", {"vocab_size": 0}),
    }
    cases = [pytest.param("config.json", ("edit", key, value), id=f"config-{name}") for name, (key, value) in config_edits.items()]
    cases += [pytest.param(f, corpus.Case(c.id, c.value), id=f"{f}-{c.id}")
              for f in ("config.json", "processor_config.json", "tokenizer_config.json")
              for c in corpus.json_tamperings({"a": 1}) if c.id in (
                  "json-nested-100k-lists", "json-int-5000-digits", "json-lone-surrogate-escape", "json-html",
                  "json-top-level-list", "json-empty", "json-not-utf8", "directory")]
    cases += [pytest.param("tokenizer.json", corpus.Case("garbage", b"{\"version\": 1}"), id="tokenizer-garbage"),
              pytest.param("model.safetensors", corpus.Case("truncated", "half"), id="weights-truncated"),
              pytest.param("model.safetensors", corpus.Case("header-huge", "huge"), id="weights-header-huge")]
    return cases


@pytest.mark.parametrize(("name", "case"), _checkpoint_cases())
def test_damaged_checkpoint(tmp_path: Path, name: str, case: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from blip2plugins import demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "model"
    shutil.copytree(Path(demo.__file__).parent / "model", folder, ignore=shutil.ignore_patterns("retrieval"))
    path = folder / name
    if isinstance(case, tuple):
        _, key, value = case
        config = json.loads(path.read_text())
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        path.write_text(json.dumps(config))
    elif name == "model.safetensors":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case.value == "half" else b"\xff" * 8 + data[8:])  # type: ignore[union-attr]
    else:
        corpus.apply(case, path)  # type: ignore[arg-type]
    loaded = checks.api(lambda: Host.load(str(folder), device="cpu", retrieval=False), f"Host.load(checkpoint with {name} {case})")
    if isinstance(loaded, Host):
        try:
            checks.results(checks.api(lambda: loaded.caption(GOOD), "caption"), "caption")
        finally:
            loaded.close()
