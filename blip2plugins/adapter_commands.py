"""Default plugin: ``blip2 adapters list|promote|rollback``, over an adapter store (:mod:`blip2plugins.store`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from .cli_options import PathName, one_line_errors, options, table
from .errors import ModelLoadError, StoreError
from .hookspecs import hookimpl
from .presets import resolve
from .store import ENV_STORE, AdapterStore
from .types import AdapterVersion

store_option = click.option(
    "--store", type=PathName(file_okay=False, path_type=Path), envvar=ENV_STORE, show_envvar=True,
    help="Adapter store folder.  [default: the user cache, ~/.cache/blip2plugins/adapters on Linux]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


adapter_options = options(
    click.option("--name", required=True, metavar="NAME", help="The adapter's name."),
    click.option("--model", required=True, metavar="NAME", help="The base model it applies to."),
    store_option, json_option,
)


def _base_model(model: str) -> str:
    """The name adapters of ``model`` are stored under: a preset's name (also for its aliases), a
    checkpoint folder's name, else ``model`` itself."""
    try:
        return resolve(model).name
    except ModelLoadError:
        return model


def _record(adapter: AdapterVersion, current: bool, problem: str | None = None) -> dict[str, Any]:
    return {**dataclasses.asdict(adapter), "current": current, **({"problem": problem} if problem else {})}


def _metrics(adapter: AdapterVersion) -> str:
    return " ".join(f"{key}={value:.4g}" for key, value in sorted(adapter.metrics.items())) or "-"


@click.group()
def adapters() -> None:
    """Fine-tuned adapter versions: list them, choose the one served, roll back."""


@adapters.command("list")
@store_option
@click.option("--model", metavar="NAME", help="Only the adapters of this base model.")
@click.option("--name", metavar="NAME", help="Only the adapter of this name.")
@json_option
def list_command(store: Path | None, model: str | None, name: str | None, as_json: bool) -> None:
    """List adapter versions, oldest first; `*` marks the version each adapter serves, `!` one whose
    base model's MODEL.json is damaged (it still serves; no version can be added until it is fixed)."""
    with one_line_errors(StoreError, OSError):
        adapter_store = AdapterStore(store)
        model = None if model is None else _base_model(model)
        pairs = adapter_store.names(model)
        if name is not None:
            if name not in {adapter for _, adapter in pairs}:
                known = ", ".join(sorted({adapter for _, adapter in pairs})) or "none"
                where = f"base model {model!r}" if model is not None else "any base model"
                raise StoreError(f"no adapter {name!r} for {where} in {adapter_store.root} (adapters: {known})")
            pairs = [pair for pair in pairs if pair[1] == name]
        problems = {base_model: adapter_store.model_problem(base_model) for base_model, _ in pairs}
        rows: list[tuple[AdapterVersion, bool]] = []
        for base_model, adapter in pairs:
            try:
                current = adapter_store.current(base_model, adapter)
            except StoreError as exc:  # a corrupt CURRENT hides the marker, not the listing
                click.echo(f"blip2: warning: {exc}", err=True)
                current = None
            rows += [(version, current is not None and version.version == current.version)
                     for version in adapter_store.versions(base_model, adapter)]
    if as_json:
        click.echo(json.dumps([_record(v, current, problems[v.base_model]) for v, current in rows], indent=2))
    elif not rows:
        click.echo(f"blip2: no adapters in {adapter_store.root}", err=True)
    else:
        table(["", "MODEL", "NAME", "VERSION", "METHOD", "STATUS", "CREATED", "METRICS"], [
            [("*" if current else "") + ("!" if problems[v.base_model] else ""), v.base_model, v.name, v.version,
             v.method, v.status, v.created, _metrics(v)]
            for v, current in rows
        ])


@adapters.command()
@click.argument("version")
@adapter_options
def promote(version: str, name: str, model: str, store: Path | None, as_json: bool) -> None:
    """Serve VERSION (v0003, or 3) of adapter NAME; the version served before can be rolled back to."""
    with one_line_errors(StoreError, OSError):
        adapter = AdapterStore(store).promote(_base_model(model), name, version)
    _report(adapter, as_json)


@adapters.command()
@adapter_options
def rollback(name: str, model: str, store: Path | None, as_json: bool) -> None:
    """Serve again the version of adapter NAME that was served before the current one."""
    with one_line_errors(StoreError, OSError):
        adapter = AdapterStore(store).rollback(_base_model(model), name)
    _report(adapter, as_json)


def _report(adapter: AdapterVersion, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_record(adapter, True), indent=2))
    else:
        click.echo(f"{adapter.name} {adapter.version} of {adapter.base_model} is now current")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(adapters)
