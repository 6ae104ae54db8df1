"""docs/plugins.md as a test: every Python example runs, and the public types' fields are all documented.

A block whose first line is ``# path.py`` is that file: all of them are written to one scratch
folder (on PYTHONPATH) before any runs, so later examples can import earlier ones. ``test_*.py``
files run with pytest, other blocks as python scripts (``plugins_md_lineN.py``), each in a
subprocess of its own. An HTML comment
``<!-- no-run -->`` on the line before a fence leaves that block out.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from PIL import Image

import blip2plugins
from blip2plugins import ImageError, ImageLimits, ImageSource, load_image, plugins
from blip2plugins.scaffold import new_plugin

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
TEXT = DOC.read_text(encoding="utf-8")
NO_RUN = "<!-- no-run -->"
FILE_COMMENT = re.compile(r"# ([\w./-]+\.py)")
#: ``* `name` (`type`)`` or ``* `name` (`type`, default `expr`)``, at the start of a field's bullet.
FIELD = re.compile(r"^\* `(\w+)` \(`([^`]+)`(?:, default `([^`]+)`)?\): ", re.MULTILINE)
PUBLIC_TYPES = [getattr(blip2plugins, name) for name in blip2plugins.__all__
                if dataclasses.is_dataclass(getattr(blip2plugins, name))]


class Block(NamedTuple):
    line: int
    code: str
    runs: bool

    @property
    def path(self) -> str | None:
        match = FILE_COMMENT.fullmatch(self.code.split("\n", 1)[0])
        return match.group(1) if match else None


def _blocks() -> list[Block]:
    lines = TEXT.split("\n")
    blocks, start = [], None
    for number, line in enumerate(lines):
        if start is None and line == "```python":
            start = number
        elif start is not None and line == "```":
            runs = lines[start - 1].strip() != NO_RUN
            blocks.append(Block(start + 1, "\n".join(lines[start + 1:number]) + "\n", runs))
            start = None
    return blocks


BLOCKS = _blocks()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plugin-docs")
    for block in BLOCKS:
        if block.path:
            (folder / block.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / block.path).write_text(block.code, encoding="utf-8")
    return folder


def test_the_examples_are_found_and_name_each_file_once() -> None:
    paths = [block.path for block in BLOCKS if block.path]
    assert len(BLOCKS) >= 15 and "blip2_hello.py" in paths and "tests/test_blip2_hello.py" in paths
    assert len(paths) == len(set(paths))
    assert TEXT.count(NO_RUN) == sum(not block.runs for block in BLOCKS), f"{NO_RUN} must sit right before a fence"


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.runs], ids=lambda block: f"line{block.line}")
def test_example_runs(block: Block, scratch: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (plugins.ENV_ALLOW, plugins.ENV_BLOCK)}
    env.update(PYTHONPATH=str(scratch), **{plugins.ENV_ALLOW: ""})
    if block.path and Path(block.path).name.startswith("test_"):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", block.path]
    else:
        script = block.path or f"plugins_md_line{block.line}.py"  # tracebacks name the doc's line
        (scratch / script).write_text(block.code, encoding="utf-8")
        command = [sys.executable, script]
    run = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"docs/plugins.md line {block.line}:\n{run.stdout}{run.stderr}"


def test_the_tutorial_module_is_the_scaffold_s_with_one_more_hook(tmp_path: Path) -> None:
    generated = (new_plugin("hello", tmp_path / "hello") / "blip2_hello.py").read_text()
    tutorial = next(block.code for block in BLOCKS if block.path == "blip2_hello.py")
    body = generated[generated.index("SCHEME = "):]
    assert body in tutorial and "def process_result(" in tutorial[tutorial.index(body) + len(body):]


def _documented(name: str) -> list[tuple[str, str, str | None]]:
    match = re.search(rf"^### {name}\n(.*?)(?=^#)|^### {name}\n(.*)\Z", TEXT, flags=re.MULTILINE | re.DOTALL)
    assert match, f"docs/plugins.md has no '### {name}' section"
    return FIELD.findall(match.group(1) or match.group(2))


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("cls", PUBLIC_TYPES, ids=lambda cls: cls.__name__)
def test_every_field_of_a_public_type_is_documented(cls: type) -> None:
    documented = _documented(cls.__name__)
    fields = dataclasses.fields(cls)
    assert [name for name, _, _ in documented] == [field.name for field in fields]
    for (name, kind, default), field in zip(documented, fields):
        assert kind == str(field.type).strip("'\""), f"{cls.__name__}.{name}"
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert not default, f"{cls.__name__}.{name} has no default"
        else:
            assert default and eval(default, {}) == _default(field), f"{cls.__name__}.{name}"


def test_the_public_types_are_the_exported_dataclasses() -> None:
    names = {cls.__name__ for cls in PUBLIC_TYPES}
    assert names == {"AdapterVersion", "ImageLimits", "ImageSource", "ModelPreset", "Result", "ServeCommand"}


@pytest.mark.parametrize(("ref", "claimed"), [
    ("s3://bucket/key.jpg", True), ("S3://Bucket/Key.jpg", True), ("s3:bucket/key.jpg", True), ("s3:", True),
    ("s3x://bucket/key.jpg", False), ("s3//bucket/key.jpg", False), (" s3://bucket/key.jpg", False),
    ("s3", False), ("bucket/s3://key.jpg", False),
])
def test_what_a_scheme_source_receives(ref: str, claimed: bool, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """As the register_image_sources section says: the string as given, for any case of ``s3:``."""
    monkeypatch.chdir(tmp_path)
    received: list[str] = []
    predicate: list[str] = []

    def record(ref: str, limits: ImageLimits) -> Image.Image:
        received.append(ref)
        return Image.new("RGB", (4, 4))

    by_scheme = ImageSource(name="s3", scheme="s3", load=record)
    watcher = ImageSource(name="watch", matches=lambda ref: predicate.append(ref) or False, load=record)
    if claimed:
        load_image(ref, sources=[watcher, by_scheme])
    else:
        with pytest.raises(ImageError, match="unsupported scheme|file not found"):
            load_image(ref, sources=[watcher, by_scheme])
    assert received == ([ref] if claimed else [])
    assert predicate == [ref]


def test_a_local_file_or_a_path_object_never_reaches_a_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    never = ImageSource(name="s3", matches=lambda ref: True, load=lambda ref, limits: b"")
    Image.new("RGB", (4, 4)).save("s3:cat.png")
    assert load_image("s3:cat.png", sources=[never]).size == (4, 4)
    Image.new("RGB", (5, 5)).save("cat.png")
    assert load_image(Path("cat.png"), sources=[never]).size == (5, 5)
