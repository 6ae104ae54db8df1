"""The adapter store under hostile files and arguments: one-line StoreError naming the file or the input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest

from blip2plugins.errors import StoreError
from blip2plugins.store import AdapterStore, model_slug, parse_ref, version_id

BASE = "demo"
NAME = "captions"


def weights(folder: Path) -> None:
    (folder / "weights.safetensors").write_bytes(b"w")


def add(store: AdapterStore, **kwargs: object) -> object:
    options: dict[str, object] = {"method": "qformer", "metrics": {"caption_exact_match": 0.5}, "dataset": "d", **kwargs}
    return store.add(options.pop("base", BASE), options.pop("name", NAME), weights, **options)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    store = AdapterStore(tmp_path / "store")
    add(store)
    store.promote(BASE, NAME, "1")
    return store


def one_line(exc: pytest.ExceptionInfo[StoreError], *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and len(message) < 500, message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize("file", ["version.json", "CURRENT", "MODEL.json"])
@pytest.mark.parametrize(("content", "reason"), [
    (b"[" * 100_000, "nested more than 64 levels deep"),
    (b'{"current": ' + b"1" * 5000 + b"}", "a number of 5,000 digits"),
    (b"\xff{}", "not UTF-8 text"),
    (b"", "not valid JSON"),
])
def test_hostile_metadata_is_one_line_naming_the_file(store: AdapterStore, file: str, content: bytes,
                                                      reason: str) -> None:
    adapter_dir = store.root / model_slug(BASE) / NAME
    path = {"version.json": adapter_dir / "v0001" / file, "CURRENT": adapter_dir / file,
            "MODEL.json": adapter_dir.parent / file}[file]
    path.write_bytes(content)
    if file == "MODEL.json":  # its adapters still list (by their version.json) and serve; adds are refused
        assert store.names() == [(BASE, NAME)] and store.current(BASE, NAME).version == "v0001"  # type: ignore[union-attr]
        assert reason in store.model_problem(BASE)  # type: ignore[operator]
        with pytest.raises(StoreError) as caught:
            add(store)
    else:
        with pytest.raises(StoreError) as caught:
            store.current(BASE, NAME)
    one_line(caught, str(path), reason)


@pytest.mark.parametrize("file", ["version.json", "CURRENT"])
@pytest.mark.parametrize("odd", ["fifo", "dev-zero", "directory", "symlink-loop"])
def test_metadata_that_is_not_a_regular_file_is_refused_without_blocking(store: AdapterStore, file: str,
                                                                         odd: str) -> None:
    adapter_dir = store.root / model_slug(BASE) / NAME
    path = adapter_dir / "v0001" / file if file == "version.json" else adapter_dir / file
    path.unlink()
    {"fifo": lambda: os.mkfifo(path), "dev-zero": lambda: os.symlink("/dev/zero", path),
     "directory": path.mkdir, "symlink-loop": lambda: os.symlink(path, path)}[odd]()
    with pytest.raises(StoreError) as caught:
        store.current(BASE, NAME)
    one_line(caught, str(path))


@pytest.mark.parametrize(("version", "shown"), [
    ("1" * 4400, "'1111111111"), ("v" + "1" * 5000, "'v111111111"), ("\u0663", "'\u0663'"), (" ", "' '"),
    (10**5000, "an integer of thousands of digits"), (None, "None"), (0, "0"), ("1234567890", "'1234567890'"),
], ids=["4400-digits", "v-5000-digits", "arabic-indic-digit", "space", "huge-int", "none", "zero", "10-digits"])
def test_version_ids_of_odd_spellings_are_refused_in_one_short_line(store: AdapterStore, version: object,
                                                                    shown: str) -> None:
    for call in (lambda: version_id(version), lambda: store.get(BASE, NAME, version),  # type: ignore[arg-type]
                 lambda: store.promote(BASE, NAME, version)):  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="is not a version id like v0003") as caught:
            call()
        one_line(caught, shown)
    assert [version_id(v) for v in (3, "v3", "V000000003", "123456789")] == ["v0003"] * 3 + ["v123456789"]


@pytest.mark.parametrize(("ref", "reason"), [
    ("base@" + "1" * 4400, "is not a version id"), ("a" * 300, "adapter name 'aaaaaaaa"),
    ("Caps@1", "adapter name 'Caps'"), ("a\x00b", "adapter name"), ("../x@1", "adapter name"),
    ("x@", "version '' is not a version id"), (5, "got 5"),
])
def test_references_that_name_no_adapter_are_refused(store: AdapterStore, ref: object, reason: str) -> None:
    with pytest.raises(StoreError) as caught:
        store.resolve(BASE, ref)  # type: ignore[arg-type]
    one_line(caught, reason)
    assert parse_ref("captions@3") == ("captions", "v0003") and parse_ref("captions") == ("captions", None)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("base", "\ud800", "base model '\\ud800' is not valid text"),
    ("metrics", {"m": 10**5000}, "metric 'm' must be a finite number, got an integer of thousands of digits"),
    ("metrics", {"\ud800": 1.0}, "metric name '\\ud800' is not valid text"),
    ("dataset", "d\udcff", "dataset 'd\\udcff' is not valid text"),
    ("parent", "9" * 5000, "is not a version id"),
])
def test_odd_arguments_to_add(tmp_path: Path, field: str, value: object, reason: str) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(StoreError) as caught:
        add(store, **{field: value})
    one_line(caught, reason)
    assert not any(tmp_path.rglob("version.json"))


def test_long_base_model_names_and_methods_are_stored(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    base, method = "x" * 100_000, "m" * 10_000
    add(store, base=base, method=method)
    assert [(v.base_model, v.method) for v in store.versions(base, NAME)] == [(base, method)]
    with pytest.raises(StoreError) as caught:
        store.get(base, NAME, "2")
    one_line(caught, "has no version v0002")


@pytest.mark.parametrize("judge", [{"margin": 10**5000}, {"baseline": 10**5000}, {"baseline": float("nan")},
                                   {"metric": 5}, {"metric": "\ud800"}, {"baseline_version": "\x00", "baseline": 0.5}],
                         ids=["huge-margin", "huge-baseline", "nan-baseline", "int-metric", "surrogate-metric",
                              "nul-baseline-version"])
def test_odd_arguments_to_judge(store: AdapterStore, judge: dict[str, object]) -> None:
    candidate = add(store)
    with pytest.raises(StoreError) as caught:
        store.judge(candidate, **judge)  # type: ignore[arg-type]
    one_line(caught)
    assert store.get(BASE, NAME, "2").status == "candidate"


def layouts() -> dict[str, Callable[[Path], object]]:
    def adapter(root: Path) -> Path:
        return root / model_slug(BASE) / NAME

    return {
        "a file named like the next version": lambda root: (adapter(root) / "v0002").write_text("x"),
        "a symlink loop among the adapters": lambda root: os.symlink(adapter(root).parent / "loop",
                                                                     adapter(root).parent / "loop"),
        "a version folder of unicode digits": lambda root: (adapter(root) / "v\u0663\u0663\u0663\u0663").mkdir(),
        "a version folder of 250 digits": lambda root: (adapter(root) / ("v" + "9" * 250)).mkdir(),
        "junk in .tmp": lambda root: ((root / ".tmp").mkdir(exist_ok=True), (root / ".tmp" / "x.lock").mkdir()),
    }


@pytest.mark.parametrize("damage", layouts().values(), ids=layouts().keys())
def test_odd_layouts_keep_the_store_working(store: AdapterStore, damage: Callable[[Path], object]) -> None:
    damage(store.root)
    assert store.names() == [(BASE, NAME)]
    assert [v.version for v in store.versions(BASE, NAME)] == ["v0001"]
    added = add(store)
    assert added.version in ("v0002", "v0003") and store.promote(BASE, NAME, added.version).status == "promoted"
    store.gc()


@pytest.mark.parametrize("blocker", [".lock", ".tmp"])
def test_a_folder_or_file_in_the_way_is_one_line(store: AdapterStore, blocker: str) -> None:
    path = store.root / blocker
    if blocker == ".lock":  # a folder where the lock file goes
        path.unlink()
        path.mkdir()
    else:  # a file where the temporary folder goes
        path.rmdir()
        path.write_text("x")
    with pytest.raises(StoreError) as caught:
        add(store)
    one_line(caught, str(store.root))
    assert store.current(BASE, NAME).version == "v0001"  # type: ignore[union-attr]


@pytest.mark.parametrize("root", ["a\x00b", "file", "dev-null"])
def test_a_store_root_that_is_no_folder(tmp_path: Path, root: str) -> None:
    (tmp_path / "file").write_text("x")
    path = {"a\x00b": tmp_path / "a\x00b", "file": tmp_path / "file", "dev-null": Path("/dev/null")}[root]
    store = AdapterStore(path)
    assert root == "a\x00b" or store.names() == []
    with pytest.raises(StoreError) as caught:
        add(store)
    one_line(caught)


def test_a_huge_metadata_file_is_refused(store: AdapterStore) -> None:
    path = store.root / model_slug(BASE) / NAME / "CURRENT"
    with open(path, "r+b") as handle:
        handle.truncate(65 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(StoreError) as caught:
        store.current(BASE, NAME)
    one_line(caught, str(path), "larger than")
    assert json.loads((store.root / model_slug(BASE) / NAME / "v0001" / "version.json").read_text())["version"] == "v0001"


def test_a_promotion_removes_what_a_killed_write_of_current_left(store: AdapterStore) -> None:
    adapter_dir = store.root / model_slug(BASE) / NAME
    stale = adapter_dir / ".CURRENT.0123456789abcdef0123456789abcdef.tmp"
    stale.write_text("{half")
    add(store)
    store.promote(BASE, NAME, "2")
    assert sorted(entry.name for entry in adapter_dir.iterdir()) == ["CURRENT", "v0001", "v0002"]
