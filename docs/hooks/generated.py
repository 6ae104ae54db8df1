"""MkDocs hook: the pages generated at build time, so they cannot drift from what they show.

- The home page is the README, its ``docs/`` links made relative to the site.
- The command-line reference is every command's ``--help`` (with every installed plugin's commands).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import click

README = "<!-- the README -->"
REFERENCE = "<!-- blip2 command reference -->"
ROOT = Path(__file__).resolve().parents[2]


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if README in markdown:
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        markdown = markdown.replace(README, re.sub(r"\]\(docs/", "](", readme))
    if REFERENCE in markdown:
        from blip2plugins.cli import build_cli

        markdown = markdown.replace(REFERENCE, "\n".join(_sections(build_cli(), ["blip2"])))
    return markdown


def _sections(command: click.Command, path: list[str]) -> Iterator[str]:
    context = click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100)
    yield f"### {' '.join(path)}\n\n```text\n{command.get_help(context)}\n```\n"
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                yield from _sections(sub, [*path, name])
