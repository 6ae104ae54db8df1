"""The adapter store: versions, atomic writes under kills and concurrency, the eval gate, rollback, corruption."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from blip2plugins import plugins, store as store_module
from blip2plugins.errors import StoreError
from blip2plugins.hookspecs import hookimpl
from blip2plugins.store import AdapterStore, default_root, model_slug, version_id
from blip2plugins.types import AdapterVersion

BASE = "Salesforce/blip2-opt-2.7b"
NAME = "captions"
EM = "caption_exact_match"


def lora(tag: str) -> Callable[[Path], None]:
    """A ``write`` that stores a PEFT-like folder whose weights file says ``tag``."""
    def write(folder: Path) -> None:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
        (folder / "adapter_model.safetensors").write_text(tag)
    return write


def add(store: AdapterStore, tag: str = "w", metrics: dict[str, float] | None = None, *, base: str = BASE,
        name: str = NAME, **kwargs: object) -> AdapterVersion:
    return store.add(base, name, lora(tag), method="lora", metrics={EM: 0.5} if metrics is None else metrics,
                     dataset=f"data-{tag}", **kwargs)  # type: ignore[arg-type]


def temp_entries(store: AdapterStore) -> list[str]:
    tmp = store.root / ".tmp"
    return sorted(entry.name for entry in tmp.iterdir()) if tmp.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "store")


pytestmark = pytest.mark.usefixtures("fresh_plugins")


@pytest.fixture
def promoted() -> list[AdapterVersion]:
    """Every AdapterVersion that the ``adapter_promoted`` hook receives."""
    seen: list[AdapterVersion] = []
    plugins.register_plugin(SimpleNamespace(adapter_promoted=hookimpl(lambda adapter: seen.append(adapter))),
                            name="recorder")
    return seen


# -- add, list, get -----------------------------------------------------------------------------

def test_add_lists_and_gets_versions(store: AdapterStore) -> None:
    first = add(store, "one", {EM: 0.5, "vqa_accuracy": 0.25})
    second = add(store, "two", {EM: 0.75}, parent="1")
    assert [v.version for v in store.versions(BASE, NAME)] == ["v0001", "v0002"]
    assert store.versions(BASE, NAME) == [first, second]
    assert (first.status, first.reason, first.parent, second.parent) == ("candidate", "", None, "v0001")
    assert (second.method, second.base_model, second.dataset, dict(second.metrics)) == (
        "lora", BASE, "data-two", {EM: 0.75})
    assert datetime.fromisoformat(second.created).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert Path(second.path) == store.root / model_slug(BASE) / NAME / "v0002"
    assert (Path(second.path) / "adapter_model.safetensors").read_text() == "two"
    record = json.loads((Path(second.path) / "version.json").read_text())
    assert "path" not in record and record["version"] == "v0002" and record["base_model"] == BASE
    assert record["files"] == {"adapter_config.json": len(json.dumps({"peft_type": "LORA", "r": 4})),
                               "adapter_model.safetensors": 3}
    assert store.get(BASE, NAME, "2") == store.get(BASE, NAME, "v0002") == second
    assert store.latest(BASE, NAME) == second
    assert store.current(BASE, NAME) is None
    assert temp_entries(store) == []


def test_names_and_base_model_slugs(store: AdapterStore) -> None:
    add(store, base="demo", name="shapes")
    add(store, base="Salesforce/blip2-opt-2.7b")
    add(store, base="Salesforce-blip2-opt-2.7b")
    add(store, base="salesforce/blip2-opt-2.7b", name="vqa")
    assert store.names() == [("Salesforce-blip2-opt-2.7b", NAME), ("Salesforce/blip2-opt-2.7b", NAME),
                             ("demo", "shapes"), ("salesforce/blip2-opt-2.7b", "vqa")]
    assert store.names("demo") == [("demo", "shapes")]
    slugs = {model_slug(base) for base, _ in store.names()}
    assert len(slugs) == 4  # names that differ only by case or punctuation still get their own folder
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*", slug) for slug in slugs)
    assert json.loads((store.root / model_slug(BASE) / "MODEL.json").read_text()) == {"base_model": BASE}
    assert [v.version for v in store.versions("salesforce/blip2-opt-2.7b", "vqa")] == ["v0001"]


def test_version_ids_and_unknown_lookups_name_what_exists(store: AdapterStore) -> None:
    assert [version_id(v) for v in ("v0003", "v3", "3", "V12", "12345")] == ["v0003", "v0003", "v0003", "v0012",
                                                                             "v12345"]
    with pytest.raises(StoreError, match="'latest' is not a version id"):
        version_id("latest")
    add(store, base="demo", name="shapes")
    add(store)
    with pytest.raises(StoreError, match=r"no adapters for base model 'opt' .*\(base models: Salesforce/blip2-opt-2.7b, demo\)"):
        store.versions("opt", NAME)
    with pytest.raises(StoreError, match=r"no adapter 'vqa' for base model 'demo' .*\(adapters: shapes\)"):
        store.versions("demo", "vqa")
    assert store.current("demo", "vqa") is None and store.current("nobody", "vqa") is None
    with pytest.raises(StoreError, match=r"has no version v0007 \(versions: v0001\)"):
        store.get(BASE, NAME, "7")
    with pytest.raises(StoreError, match=r"no version v0002"):
        store.promote(BASE, NAME, "v2")
    with pytest.raises(StoreError, match=r"no version v0002"):
        add(store, parent="v0002")
    empty = AdapterStore(store.root / "missing")
    assert empty.names() == [] and empty.gc() == []
    with pytest.raises(StoreError, match=r"base models: none"):
        empty.get(BASE, NAME, "1")
    assert not empty.root.exists()  # a failed lookup creates nothing


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "Captions", "adapter name 'Captions' must be"),
    ("name", "../up", "adapter name '../up' must be"),
    ("base", "  ", "base model must be a non-empty string"),
    ("metrics", {EM: float("nan")}, "metric 'caption_exact_match' must be a finite number"),
    ("metrics", {EM: "high"}, "metric 'caption_exact_match' must be a finite number"),
    ("metrics", {EM: True}, "metric 'caption_exact_match' must be a finite number"),
])
def test_bad_arguments_are_refused_and_store_nothing(store: AdapterStore, field: str, value: object,
                                                     message: str) -> None:
    with pytest.raises(StoreError, match=re.escape(message)):
        add(store, **{field: value})  # type: ignore[arg-type]
    assert store.names() == [] and temp_entries(store) == []


# -- atomicity ----------------------------------------------------------------------------------

def test_write_that_raises_leaves_nothing(store: AdapterStore) -> None:
    def failing(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        store.add(BASE, NAME, failing, method="lora", metrics={}, dataset="d")
    assert store.names() == [] and temp_entries(store) == []
    add(store, "one")
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.add(BASE, NAME, failing, method="lora", metrics={}, dataset="d")
    assert [v.version for v in store.versions(BASE, NAME)] == ["v0001"]
    assert add(store, "two").version == "v0002"  # the failed write used no number
    assert temp_entries(store) == []


@pytest.mark.parametrize(("write", "message"), [
    (lambda folder: None, "write() wrote no files"),
    (lambda folder: (folder / "version.json").write_text("{}"), "write() created version.json"),
])
def test_write_must_leave_artifact_files_only(store: AdapterStore, write: Callable[[Path], None],
                                             message: str) -> None:
    with pytest.raises(StoreError, match=re.escape(message)):
        store.add(BASE, NAME, write, method="qformer", metrics={}, dataset="d")
    assert store.names() == [] and temp_entries(store) == []


CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from blip2plugins.store import AdapterStore

    root, marker, mode = sys.argv[1:]

    def write(folder):
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
        if mode == "sleep":
            Path(marker).touch()
            time.sleep(120)

    if mode == "before-rename":  # die at the last moment: files and version.json written, folder not renamed
        os.rename = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    AdapterStore(root).add("Salesforce/blip2-opt-2.7b", "captions", write, method="lora", metrics={}, dataset="d")
""")


def run_child(store: AdapterStore, marker: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(store.root), str(marker), mode])


def test_process_killed_mid_write_leaves_only_complete_versions(store: AdapterStore, tmp_path: Path) -> None:
    add(store, "one")
    marker = tmp_path / "writing"
    child = run_child(store, marker, "sleep")
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.05)
        assert len(temp_entries(store)) == 2  # its folder and its lock file
        assert store.gc() == []  # a live writer's folder is never collected
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert [v.version for v in store.versions(BASE, NAME)] == ["v0001"]
    assert len(temp_entries(store)) == 2
    assert add(store, "two").version == "v0002"  # and the next add removed the dead writer's folder
    assert temp_entries(store) == []
    assert (Path(store.get(BASE, NAME, "2").path) / "adapter_model.safetensors").read_text() == "two"


def test_process_killed_before_rename_leaves_an_unlisted_folder_for_gc(store: AdapterStore, tmp_path: Path) -> None:
    add(store, "one")
    child = run_child(store, tmp_path / "unused", "before-rename")
    assert child.wait(timeout=120) == -signal.SIGKILL
    assert [v.version for v in store.versions(BASE, NAME)] == ["v0001"]
    leftover = [store.root / ".tmp" / entry for entry in temp_entries(store) if not entry.endswith(".lock")]
    assert len(leftover) == 1 and (leftover[0] / "version.json").exists()
    assert store.gc() == leftover
    assert temp_entries(store) == []
    assert add(store, "two").version == "v0002"


def test_gc_keeps_the_folder_of_a_writer_still_running(store: AdapterStore) -> None:
    started, release = threading.Event(), threading.Event()
    results: list[AdapterVersion] = []

    def slow(folder: Path) -> None:
        (folder / "weights.safetensors").write_text("w")
        started.set()
        release.wait(30)

    worker = threading.Thread(target=lambda: results.append(
        store.add(BASE, NAME, slow, method="qformer", metrics={}, dataset="d")))
    worker.start()
    assert started.wait(30)
    assert store.gc() == []
    assert add(store, "meanwhile").version == "v0001"  # another add also leaves it alone
    release.set()
    worker.join(30)
    assert [r.version for r in results] == ["v0002"]
    assert (Path(results[0].path) / "weights.safetensors").read_text() == "w"
    assert temp_entries(store) == []


def _add_five(root: str, worker: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    for i in range(5):
        def write(folder: Path, tag: str = f"{worker}-{i}") -> None:
            (folder / "adapter_model.safetensors").write_text(tag)
            time.sleep(0.01)
        AdapterStore(root).add(BASE, NAME, write, method="lora", metrics={}, dataset=f"{worker}-{i}")


def test_two_processes_adding_at_once_get_distinct_versions(store: AdapterStore) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_add_five, args=(str(store.root), n, barrier)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    versions = store.versions(BASE, NAME)
    assert [v.version for v in versions] == [f"v{n:04d}" for n in range(1, 11)]
    assert sorted(v.dataset for v in versions) == sorted(f"{w}-{i}" for w in range(2) for i in range(5))
    for version in versions:  # each folder holds the files its own writer wrote
        assert (Path(version.path) / "adapter_model.safetensors").read_text() == version.dataset
    assert temp_entries(store) == []


# -- the eval gate, promotion and rollback ------------------------------------------------------

def test_gate_promotes_better_and_refuses_worse_with_reason(store: AdapterStore,
                                                            promoted: list[AdapterVersion]) -> None:
    first = store.judge(add(store, "one", {EM: 0.5}))
    assert (first.status, first.reason) == ("promoted", f"{EM} 0.5, and no version was current")
    second = store.judge(add(store, "two", {EM: 0.83}))
    assert second.status == "promoted" and "0.83 >= current v0001's 0.5 + margin 0" in second.reason
    third = store.judge(add(store, "three", {EM: 0.61}))
    assert (third.status, third.reason) == ("refused", f"{EM} 0.61 < current v0002's 0.83 + margin 0")
    assert store.get(BASE, NAME, "3") == third  # the verdict is on disk
    assert store.current(BASE, NAME) == second
    assert promoted == [first, second]
    assert json.loads((Path(third.path) / "version.json").read_text())["files"]  # rewrites keep the file list


def test_gate_margin_missing_metric_and_lower_is_better(store: AdapterStore, promoted: list[AdapterVersion]) -> None:
    store.judge(add(store, "one", {EM: 0.8, "loss": 1.0}))
    close = store.judge(add(store, "two", {EM: 0.82}), margin=0.05)
    assert close.status == "refused" and close.reason == f"{EM} 0.82 < current v0001's 0.8 + margin 0.05"
    missing = store.judge(add(store, "three", {"loss": 0.5}))
    assert missing.status == "refused" and "v0003 has no metric 'caption_exact_match' (metrics: loss)" in missing.reason
    lower = store.judge(add(store, "four", {"loss": 0.7}), metric="loss", higher_is_better=False, margin=0.2)
    assert lower.status == "promoted" and lower.reason == "loss 0.7 <= current v0001's 1 - margin 0.2"
    worse = store.judge(add(store, "five", {"loss": 0.71}), metric="loss", higher_is_better=False)
    assert worse.status == "refused" and worse.reason == "loss 0.71 > current v0004's 0.7 - margin 0"
    no_base = store.judge(add(store, "six", {EM: 0.99}))
    assert no_base.status == "refused" and "current v0004 has no metric 'caption_exact_match'" in no_base.reason
    assert store.judge(lower) == store.get(BASE, NAME, "4")  # judging the current version changes nothing
    assert [a.version for a in promoted] == ["v0001", "v0004"]
    with pytest.raises(StoreError, match="margin must be a finite number"):
        store.judge(no_base, margin=float("inf"))


def test_promote_by_hand_and_rollback(store: AdapterStore, promoted: list[AdapterVersion]) -> None:
    for tag in ("one", "two", "three"):
        add(store, tag)
    with pytest.raises(StoreError, match="no previous version to roll back to"):
        store.rollback(BASE, NAME)
    for version in ("1", "2", "3"):
        store.promote(BASE, NAME, version)
    refused = store.judge(store.get(BASE, NAME, "1"), margin=1.0)
    assert refused.status == "refused"
    assert store.current(BASE, NAME).version == "v0003"  # type: ignore[union-attr]
    assert store.rollback(BASE, NAME).version == "v0002"
    assert store.current(BASE, NAME).version == "v0002"  # type: ignore[union-attr]
    again = store.promote(BASE, NAME, "v0001", reason="the refusal was wrong")
    assert (again.status, again.reason) == ("promoted", "the refusal was wrong")
    assert [store.rollback(BASE, NAME).version for _ in range(2)] == ["v0002", "v0001"]
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback(BASE, NAME)
    assert [a.version for a in promoted] == ["v0001", "v0002", "v0003", "v0002", "v0001", "v0002", "v0001"]
    assert promoted[-1] == store.get(BASE, NAME, "1") == store.current(BASE, NAME)
    assert all(a.status == "promoted" and a.base_model == BASE and a.name == NAME for a in promoted)
    state = json.loads((store.root / model_slug(BASE) / NAME / "CURRENT").read_text())
    assert state["current"] == "v0001" and state["previous"] == []
    assert [(h["action"], h["version"]) for h in state["history"]][-3:] == [
        ("promote", "v0001"), ("rollback", "v0002"), ("rollback", "v0001")]


def test_current_reads_no_directory_listing(store: AdapterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.promote(BASE, NAME, add(store).version)

    def refuse(*args: object) -> None:
        raise AssertionError("current() listed a directory")

    for name in ("scandir", "listdir", "walk"):
        monkeypatch.setattr(os, name, refuse)
    assert store.current(BASE, NAME).version == "v0001"  # type: ignore[union-attr]


def test_failed_current_replace_keeps_the_old_pointer(store: AdapterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.promote(BASE, NAME, add(store, "one").version)
    add(store, "two")
    adapter_dir = store.root / model_slug(BASE) / NAME
    before = (adapter_dir / "CURRENT").read_bytes()
    real_replace = os.replace

    def replace(source: str | Path, target: str | Path) -> None:
        if Path(target).name == "CURRENT":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError, match="CURRENT: cannot write: No space left"):
        store.promote(BASE, NAME, "2")
    assert (adapter_dir / "CURRENT").read_bytes() == before
    assert store.current(BASE, NAME).version == "v0001"  # type: ignore[union-attr]
    assert store.get(BASE, NAME, "2").status == "candidate"
    assert sorted(entry.name for entry in adapter_dir.iterdir()) == ["CURRENT", "v0001", "v0002"]  # no temp file


PROMOTE_CHILD = textwrap.dedent("""
    import os, sys
    from blip2plugins import store

    root, kill_at = sys.argv[1], int(sys.argv[2])
    real, writes = store.write_atomic, []

    def write_atomic(path, data):  # dies (as kill -9 would: no cleanup) before its kill_at-th file write
        writes.append(path)
        if len(writes) == kill_at:
            os._exit(9)
        real(path, data)

    store.write_atomic = write_atomic
    store.AdapterStore(root).promote("Salesforce/blip2-opt-2.7b", "captions", "2")
""")


def test_a_promotion_killed_at_any_write_is_done_or_not_done(tmp_path: Path) -> None:
    """CURRENT alone decides what is promoted: no kill point leaves v0002 "promoted" but not current."""
    for kill_at in range(1, 10):
        store = AdapterStore(tmp_path / f"store-{kill_at}")
        store.promote(BASE, NAME, add(store, "one").version)
        add(store, "two")
        child = subprocess.run([sys.executable, "-c", PROMOTE_CHILD, str(store.root), str(kill_at)], timeout=120)
        current = store.current(BASE, NAME).version  # type: ignore[union-attr]
        statuses = {v.version: v.status for v in store.versions(BASE, NAME)}
        assert statuses == {"v0001": "promoted", "v0002": "promoted" if current == "v0002" else "candidate"}, kill_at
        if child.returncode == 0:
            assert current == "v0002" and kill_at > 1
            break
        assert child.returncode == 9 and current == "v0001"
    else:
        raise AssertionError("the promotion never finished")


def test_statuses_follow_current_history(store: AdapterStore) -> None:
    first, second = add(store, "one"), add(store, "two")
    path = Path(second.path) / "version.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "status": "promoted", "reason": "half done"}))  # CURRENT never named it
    assert store.get(BASE, NAME, "2").status == "candidate"
    assert "did not complete" in store.get(BASE, NAME, "2").reason
    store.promote(BASE, NAME, "1")
    before = (Path(first.path) / "version.json").read_bytes()
    store.promote(BASE, NAME, "2")
    refused = store.judge(store.get(BASE, NAME, "1"), margin=1.0)  # promoted before: CURRENT records the refusal
    assert (Path(first.path) / "version.json").read_bytes() == before
    assert [(v.version, v.status) for v in store.versions(BASE, NAME)] == [("v0001", "refused"), ("v0002", "promoted")]
    assert store.get(BASE, NAME, "1") == refused
    assert store.promote(BASE, NAME, "1") == store.get(BASE, NAME, "1") == store.current(BASE, NAME)


# -- corrupt metadata ---------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "reason"), [
    ("{not json", "line 1: not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (None, "missing"),
])
def test_corrupt_version_is_skipped_by_listing_and_named_by_get(store: AdapterStore, caplog: pytest.LogCaptureFixture,
                                                                content: str | None, reason: str) -> None:
    first, second = add(store, "one"), add(store, "two")
    path = Path(first.path) / "version.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="blip2plugins.store"):
        assert store.versions(BASE, NAME) == [second]
    assert str(path) in caplog.text and reason in caplog.text
    with pytest.raises(StoreError, match=re.escape(f"{path}: {reason}")):
        store.get(BASE, NAME, "1")
    assert store.names() == [(BASE, NAME)]
    assert add(store, "three").version == "v0003"  # the corrupt folder keeps its number


@pytest.mark.parametrize(("edit", "message"), [
    ({"status": "great"}, "bad or missing 'status'"),
    ({"metrics": {EM: "high"}}, "bad or missing 'metrics'"),
    ({"version": "v0009"}, "describes 'captions' 'v0009'"),
])
def test_version_json_with_bad_fields_is_refused(store: AdapterStore, edit: dict[str, object], message: str) -> None:
    path = Path(add(store).path) / "version.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(StoreError, match=re.escape(f"{path}: {message}")):
        store.get(BASE, NAME, "1")
    assert store.versions(BASE, NAME) == []


def test_corrupt_current_is_named_and_left_alone(store: AdapterStore) -> None:
    store.promote(BASE, NAME, add(store).version)
    path = store.root / model_slug(BASE) / NAME / "CURRENT"
    for content, reason in (("{", "line 1: not valid JSON"), ('{"current": "best", "previous": [], "history": []}',
                                                       "'current' is not a version id")):
        path.write_text(content)
        with pytest.raises(StoreError, match=re.escape(f"{path}: {reason}")):
            store.current(BASE, NAME)
        with pytest.raises(StoreError, match=re.escape(str(path))):
            store.promote(BASE, NAME, "1")
        assert path.read_text() == content
    assert len(store.versions(BASE, NAME)) == 1


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(store_module.ENV_STORE, str(tmp_path / "mine"))
    assert default_root() == tmp_path / "mine" == AdapterStore().root
    monkeypatch.delenv(store_module.ENV_STORE)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "blip2plugins" / "adapters"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "blip2plugins" / "adapters"


def test_gate_against_a_baseline_measured_on_the_same_held_out_set(tmp_path) -> None:
    store = AdapterStore(tmp_path)
    first = store.add("demo", "words", lambda folder: (folder / "w.bin").write_bytes(b"1"), method="lora",
                      metrics={"caption_exact_match": 0.4}, dataset="d1")
    refused = store.judge(first, baseline=0.5)  # worse than the base model it would replace
    assert refused.status == "refused"
    assert refused.reason == "caption_exact_match 0.4 < the base model's (same held-out set) 0.5 + margin 0"
    assert store.current("demo", "words") is None
    promoted = store.judge(first, baseline=0.4)
    assert promoted.status == "promoted" and store.current("demo", "words").version == first.version


def test_resolve_names_a_version_by_adapter_name(tmp_path) -> None:
    store = AdapterStore(tmp_path)
    write = lambda folder: (folder / "w.bin").write_bytes(b"1")  # noqa: E731
    first = store.add("demo", "words", write, method="lora", metrics={"caption_exact_match": 0.4}, dataset="d")
    with pytest.raises(StoreError, match="no current version"):
        store.resolve("demo", "words")
    assert store.resolve("demo", "words@v1") == first
    store.promote("demo", "words", "v0001")
    assert store.resolve("demo", "words").version == "v0001"
    with pytest.raises(StoreError, match=r"no adapter 'other' .*\(adapters: words\)"):
        store.resolve("demo", "other")


def test_gate_refuses_when_what_is_served_changed_since_the_baseline(tmp_path) -> None:
    store = AdapterStore(tmp_path)
    write = lambda folder: (folder / "w.bin").write_bytes(b"1")  # noqa: E731
    other = store.add("demo", "words", write, method="lora", metrics={"caption_exact_match": 0.9}, dataset="d0")
    candidate = store.add("demo", "words", write, method="lora", metrics={"caption_exact_match": 0.6}, dataset="d1")
    store.promote("demo", "words", other.version)  # by hand, while the candidate trained against the base model
    judged = store.judge(candidate, baseline=0.5, baseline_version=None)
    assert judged.status == "refused"
    assert judged.reason.startswith(f"measured against the base model, but {other.version} became current")
    assert store.current("demo", "words").version == other.version
