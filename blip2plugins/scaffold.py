"""``blip2 plugins new NAME``: write a new plugin project, ready to install, test and publish.

The project holds a ``pyproject.toml`` declaring the ``blip2plugins`` entry point NAME, a module
``blip2_NAME`` with two working hooks (a model preset and an image source), a README, and tests that
use :mod:`blip2plugins.testing`.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

import click

from .errors import PluginError

__all__ = ["new", "new_plugin"]

_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_NAME = 40

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "A blip2plugins plugin: the $name-demo preset and $name: colour images"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["blip2plugins"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The entry point's name is the plugin's name: `blip2 plugins` lists it, BLIP2_BLOCK_PLUGINS=$name skips it.
[project.entry-points.blip2plugins]
$name = "$module"

[tool.setuptools]
py-modules = ["$module"]

[tool.pytest.ini_options]
pythonpath = ["."]
testpaths = ["tests"]
'''

_MODULE = '''\
"""$dist: a blip2plugins plugin.

* ``$name-demo``: the bundled demo model with short greedy captions by default.
* ``$name:COLOUR`` images (``$name:red``, ``$name:#336699``): a plain 64x64 image of that colour.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from PIL import Image, ImageColor

from blip2plugins import ImageError, ImageLimits, ImageSource, ModelPreset, hookimpl
from blip2plugins.presets import DEMO

SCHEME = "$name"
PRESET = dataclasses.replace(
    DEMO,
    name="$name-demo",
    aliases=(),
    description="The demo model with short greedy captions ($name plugin)",
    defaults={"num_beams": 1, "max_new_tokens": 12},
)


def load_colour(ref: str, limits: ImageLimits) -> Image.Image:
    """The image source's loader: ``$name:red`` is a 64x64 red image."""
    colour = ref.split(":", 1)[1].lstrip("/")
    try:
        return Image.new("RGB", (64, 64), ImageColor.getcolor(colour, "RGB"))
    except ValueError:
        raise ImageError(ref, f"unknown colour {colour!r}") from None


@hookimpl
def register_models(register: Callable[[ModelPreset], None]) -> None:
    register(PRESET)


@hookimpl
def register_image_sources(register: Callable[[ImageSource], None]) -> None:
    register(ImageSource(name="$name-colours", scheme=SCHEME, load=load_colour))
'''

_TESTS = '''\
"""The $name plugin beside the blip2plugins core, and no other plugin."""

from __future__ import annotations

import pytest

import $module
from blip2plugins import ImageError, load_image
from blip2plugins.plugins import model_presets
from blip2plugins.testing import plugin_fixture, run_blip2

blip2_plugin = plugin_fixture($module, "$name")
pytestmark = pytest.mark.usefixtures("blip2_plugin")


def test_the_preset_is_registered() -> None:
    preset = model_presets()["$name-demo"]
    assert preset.defaults["max_new_tokens"] == 12


def test_a_colour_reference_is_an_image() -> None:
    image = load_image("$name:red")
    assert image.size == (64, 64) and image.getpixel((0, 0)) == (255, 0, 0)


def test_an_unknown_colour_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="unknown colour 'nope'"):
        load_image("$name:nope")


def test_blip2_plugins_lists_it() -> None:
    listed = run_blip2("plugins")
    assert listed.exit_code == 0, listed.output
    assert "register_image_sources, register_models" in listed.output
'''

_README = '''\
# $dist

A plugin for blip2plugins, the BLIP-2 model host. It adds:

* the model preset `$name-demo`: the bundled demo model with short greedy captions;
* an image source for `$name:COLOUR` references (`$name:red`, `$name:#336699`): a plain 64x64 image.

## Develop

```bash
pip install -e '.[test]'
pytest
blip2 plugins                  # lists "$name" with its hooks
blip2 caption --model $name-demo $name:red
```

`BLIP2_BLOCK_PLUGINS=$name` turns the plugin off without uninstalling it.

## Publish

```bash
pip install build twine
python -m build
twine upload dist/*
```
'''

_FILES = {"pyproject.toml": _PYPROJECT, "$module.py": _MODULE, "tests/test_$module.py": _TESTS, "README.md": _README}


def new_plugin(name: str, folder: Path) -> Path:
    """Write a plugin project for the entry-point name ``name`` into ``folder`` (created, or empty) and
    return ``folder``; raises :class:`PluginError` for a bad name or a folder that is not empty."""
    if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise PluginError(f"{name!r} is not a plugin name: use up to {_MAX_NAME} lowercase letters, digits "
                          "and single hyphens, starting with a letter (like my-plugin)")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PluginError(f"{folder}: {'is not empty' if folder.is_dir() else 'exists and is not a folder'}; "
                          "give a new or empty folder")
    names = {"name": name, "dist": f"blip2-{name}", "module": "blip2_" + name.replace("-", "_")}
    for path, text in _FILES.items():
        target = folder / Template(path).substitute(names)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(text).substitute(names), encoding="utf-8")
    return folder


@click.command("new")
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(path_type=Path),
              help="The project folder, new or empty (default: ./blip2-NAME).")
def new(name: str, folder: Path | None) -> None:
    """Write a new plugin project NAME: an installable package with a model preset, an image
    source, tests and a README. NAME is the plugin's entry-point name (like my-plugin)."""
    written = new_plugin(name, folder if folder is not None else Path(f"blip2-{name}"))
    click.echo(f"wrote {written}; next: cd {written} && pip install -e '.[test]' && pytest")
