"""The entry-point plugin: the ``blip2 ray`` commands, and an image source for filesystem URIs."""

from __future__ import annotations

from typing import Callable

import click

from blip2plugins import ImageSource, hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import ray

    cli.add_command(ray)


@hookimpl
def register_image_sources(register: Callable[[ImageSource], None]) -> None:
    from . import filesystems

    register(ImageSource("pyarrow-filesystems", filesystems.load, matches=filesystems.claims))
