"""``blip2 adapters list|promote|rollback`` through click's CliRunner, with the store on disk."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import click
import pytest
from click.testing import CliRunner, Result

from blip2plugins import adapter_commands, plugins
from blip2plugins.cli import build_cli
from blip2plugins.hookspecs import hookimpl
from blip2plugins.store import ENV_STORE, AdapterStore
from blip2plugins.types import AdapterVersion

BASE = "Salesforce/blip2-opt-2.7b"


def weights(folder: Path) -> None:
    (folder / "qformer.safetensors").write_bytes(b"weights")


@pytest.fixture(autouse=True)
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[click.Group]:
    """The ``blip2`` group with this plugin registered (if not yet a default plugin), from fresh plugins."""
    monkeypatch.delenv(plugins.ENV_ALLOW, raising=False)
    monkeypatch.delenv(plugins.ENV_BLOCK, raising=False)
    monkeypatch.delenv(ENV_STORE, raising=False)
    plugins.reset()
    if not plugins.get_plugin_manager().is_registered(adapter_commands):
        plugins.register_plugin(adapter_commands, "blip2plugins.adapter_commands")
    yield build_cli()
    plugins.reset()


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    """Two versions of ``captions`` for BASE (v0001 current) and one of ``shapes`` for demo."""
    store = AdapterStore(tmp_path / "store")
    for score in (0.5, 0.75):
        store.add(BASE, "captions", weights, method="qformer", metrics={"caption_exact_match": score, "loss": 1.25},
                  dataset="d")
    store.add("demo", "shapes", weights, method="lora", metrics={}, dataset="d")
    store.promote(BASE, "captions", "v0001")
    return store


def invoke(cli: click.Group, *args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, ["adapters", *args], env=env)


def test_help_lists_the_subcommands(cli: click.Group) -> None:
    result = invoke(cli, "--help")
    assert result.exit_code == 0
    for command in ("list", "promote", "rollback"):
        assert f"  {command} " in result.stdout


def test_list_table_marks_the_current_version(cli: click.Group, store: AdapterStore) -> None:
    result = invoke(cli, "list", "--store", str(store.root))
    assert result.exit_code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["MODEL", "NAME", "VERSION", "METHOD", "STATUS", "CREATED", "METRICS"]
    assert [row[0] for row in rows] == ["*", " ", " "]
    cells = [row[1:].split() for row in rows]
    assert [c[:5] for c in cells] == [
        [BASE, "captions", "v0001", "qformer", "promoted"],
        [BASE, "captions", "v0002", "qformer", "candidate"],
        ["demo", "shapes", "v0001", "lora", "candidate"],
    ]
    assert cells[1][-2:] == ["caption_exact_match=0.75", "loss=1.25"] and cells[2][-1] == "-"
    assert cells[0][5] == store.get(BASE, "captions", "1").created


def test_list_json_with_filters_and_the_store_from_the_environment(cli: click.Group, store: AdapterStore) -> None:
    result = invoke(cli, "list", "--model", BASE, "--json", **{ENV_STORE: str(store.root)})
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert [(r["version"], r["current"], r["status"]) for r in records] == [
        ("v0001", True, "promoted"), ("v0002", False, "candidate")]
    first = {key: value for key, value in records[0].items() if key != "current"}
    assert AdapterVersion(**first) == store.get(BASE, "captions", "1")
    result = invoke(cli, "list", "--name", "shapes", "--json", "--store", str(store.root))
    assert [(r["base_model"], r["name"]) for r in json.loads(result.stdout)] == [("demo", "shapes")]


def test_list_of_an_empty_store(cli: click.Group, tmp_path: Path) -> None:
    result = invoke(cli, "list", "--store", str(tmp_path / "none"))
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"blip2: no adapters in {tmp_path / 'none'}\n"
    assert json.loads(invoke(cli, "list", "--json", "--store", str(tmp_path / "none")).stdout) == []


def test_list_survives_a_corrupt_current(cli: click.Group, store: AdapterStore) -> None:
    current = Path(store.get(BASE, "captions", "1").path).parent / "CURRENT"
    current.write_text("{")
    result = invoke(cli, "list", "--store", str(store.root))
    assert result.exit_code == 0
    assert f"blip2: warning: {current}: line 1: not valid JSON" in result.stderr
    assert len(result.stdout.splitlines()) == 4 and "*" not in result.stdout


def test_list_shows_and_flags_adapters_whose_model_json_is_damaged(cli: click.Group, store: AdapterStore) -> None:
    model_json = Path(store.get(BASE, "captions", "1").path).parents[1] / "MODEL.json"
    for damage in ('{"base_model": "someone else"}', "{"):
        model_json.write_text(damage)
        result = invoke(cli, "list", "--store", str(store.root))
        assert result.exit_code == 0, result.stderr
        assert [row[:2] for row in result.stdout.splitlines()[1:]] == ["*!", "! ", "  "]  # still served and listed
        records = json.loads(invoke(cli, "list", "--json", "--store", str(store.root)).stdout)
        assert [r["problem"].startswith(str(model_json)) for r in records if r["name"] == "captions"] == [True, True]
        assert "problem" not in records[-1] and store.current(BASE, "captions").version == "v0001"  # type: ignore[union-attr]


def test_promote_and_rollback(cli: click.Group, store: AdapterStore) -> None:
    seen: list[AdapterVersion] = []
    plugins.register_plugin(SimpleNamespace(adapter_promoted=hookimpl(lambda adapter: seen.append(adapter))),
                            name="recorder")
    root = str(store.root)
    result = invoke(cli, "promote", "2", "--name", "captions", "--model", BASE, "--store", root)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"captions v0002 of {BASE} is now current\n"
    assert store.current(BASE, "captions") == store.get(BASE, "captions", "2") == seen[-1]
    result = invoke(cli, "rollback", "--name", "captions", "--model", BASE, "--store", root, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["version"], record["current"], record["status"]) == ("v0001", True, "promoted")
    assert store.current(BASE, "captions").version == "v0001"  # type: ignore[union-attr]
    assert [a.version for a in seen] == ["v0002", "v0001"]


@pytest.mark.parametrize(("args", "message"), [
    (["promote", "v0009", "--name", "captions", "--model", BASE],
     f"blip2: adapter 'captions' of '{BASE}' has no version v0009 (versions: v0001, v0002)"),
    (["promote", "best", "--name", "captions", "--model", BASE],
     "blip2: version 'best' is not a version id like v0003"),
    (["promote", "1", "--name", "vqa", "--model", BASE], "blip2: no adapter 'vqa' for base model"),
    (["rollback", "--name", "captions", "--model", BASE],
     f"blip2: adapter 'captions' of '{BASE}' has no previous version to roll back to"),
    (["rollback", "--name", "shapes", "--model", "opt"], "(base models: Salesforce/blip2-opt-2.7b, demo)"),
    (["list", "--model", "opt"], "blip2: no adapters for base model 'opt'"),
    (["list", "--model", "demo", "--name", "captions"], "blip2: no adapter 'captions' for base model 'demo'"),
    (["list", "--name", "Captions"], "(adapters: captions, shapes)"),
    (["promote", "1" * 5000, "--name", "captions", "--model", BASE],
     "... (5,002 characters) is not a version id like v0003"),
    (["promote", "1", "--name", "a" * 300, "--model", BASE], "blip2: adapter name 'aaaaaaaaaaaa"),
])
def test_errors_are_one_line_and_exit_1(cli: click.Group, store: AdapterStore, args: list[str], message: str) -> None:
    result = invoke(cli, *args, "--store", str(store.root))
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert store.current(BASE, "captions").version == "v0001"  # type: ignore[union-attr]


def test_a_preset_alias_names_the_same_adapters(tmp_path, monkeypatch) -> None:
    """Adapters are stored under a preset's name; --model takes any of its aliases too."""
    from blip2plugins.types import ModelPreset

    class Alias:
        @hookimpl
        def register_models(self, register):
            register(ModelPreset(name="shapes-model", source="org/shapes", aliases=("shapes",)))

    plugins.register_plugin(Alias(), "test-alias")
    try:
        store = AdapterStore(tmp_path)
        store.add("shapes-model", "words", lambda f: (f / "w.bin").write_bytes(b"1"), method="lora",
                  metrics={}, dataset="d")
        result = CliRunner().invoke(build_cli(), ["adapters", "promote", "v1", "--name", "words", "--model", "shapes",
                                                  "--store", str(tmp_path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["base_model"] == "shapes-model"
    finally:
        plugins.unregister_plugin("test-alias")
