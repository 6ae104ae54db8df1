"""``blip2 caption --adapter``: an adapter folder or reference that cannot be used is one ``blip2: error:`` line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from blip2plugins import artifacts
from blip2plugins.demo import world

from test_cli import blip2
from test_hot_swap import lora


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("images") / "circle.png"
    world.render(world.make_scene({"circle": "red"})).save(path)
    return str(path)


def truncated(folder: Path) -> None:
    data = (folder / artifacts.LORA_WEIGHTS).read_bytes()
    (folder / artifacts.LORA_WEIGHTS).write_bytes(data[:-100])


def nested_config(folder: Path) -> None:
    (folder / artifacts.PEFT_CONFIG).write_text("[" * 100_000)


@pytest.mark.parametrize(("damage", "reason"), [
    (truncated, f"cannot read {artifacts.LORA_WEIGHTS}: Error while deserializing header"),
    (nested_config, "nested more than 64 levels deep"),
], ids=["truncated-safetensors", "nested-config"])
def test_a_damaged_adapter_folder_is_one_line(tiny_opt: Path, tmp_path: Path, image: str, damage, reason: str) -> None:
    folder = Path(shutil.copytree(lora(tiny_opt, tmp_path / "good", 1), tmp_path / "bad"))
    damage(folder)
    run = blip2("caption", "--model", str(tiny_opt), "--adapter", str(folder), image, BLIP2_ADAPTER_STORE=str(tmp_path))
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith(f"blip2: error: adapter '{folder}'") and reason in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_a_reference_no_folder_can_have_is_one_line(tiny_opt: Path, tmp_path: Path, image: str) -> None:
    run = blip2("caption", "--model", str(tiny_opt), "--adapter", "base@" + "1" * 4400, image,
                BLIP2_ADAPTER_STORE=str(tmp_path))
    assert (run.returncode, run.stdout) == (2, "")
    assert "(4,402 characters) is not a version id like v0003" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and len(run.stderr) < 1000
