"""``blip2plugins.scaffold``: the generated project passes its own tests and installs as a plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from blip2plugins import plugins
from blip2plugins.errors import PluginError
from blip2plugins.scaffold import new, new_plugin

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (plugins.ENV_ALLOW, plugins.ENV_BLOCK, "PYTHONPATH")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_plugin("my-plugin", tmp_path_factory.mktemp("scaffold") / "blip2-my-plugin")


def test_the_project_has_its_files(project: Path) -> None:
    files = sorted(str(path.relative_to(project)) for path in project.rglob("*") if path.is_file())
    assert files == ["README.md", "blip2_my_plugin.py", "pyproject.toml", "tests/test_blip2_my_plugin.py"]
    assert '[project.entry-points.blip2plugins]\nmy-plugin = "blip2_my_plugin"' in (project / "pyproject.toml").read_text()


def test_the_generated_tests_pass(project: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                         env=_env(PYTHONPATH=str(project)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout


def test_the_project_installs_as_an_entry_point_plugin(project: Path, tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools")
    source = shutil.copytree(project, tmp_path / "source")  # the build writes into its source folder
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True, timeout=300)
    listed = subprocess.run([sys.executable, "-m", "blip2plugins.cli", "plugins", "--json"], cwd=ROOT,
                            env=_env(PYTHONPATH=str(site), BLIP2_PLUGINS="my-plugin"),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    found = {info["name"]: info for info in json.loads(listed.stdout)}["my-plugin"]
    assert found == {"name": "my-plugin", "version": "0.1.0", "builtin": False, "status": "loaded", "reason": None,
                     "hooks": ["register_image_sources", "register_models"]}


@pytest.mark.parametrize("name", ["", "My-Plugin", "1st", "my_plugin", "my--plugin", "-x", "x-", "a b", "x" * 41])
def test_a_bad_name_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="is not a plugin name: use up to 40 lowercase letters"):
        new_plugin(name, tmp_path / "project")
    assert not (tmp_path / "project").exists()


def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PluginError, match="is not empty; give a new or empty folder"):
        new_plugin("hello", tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(PluginError, match="exists and is not a folder"):
        new_plugin("hello", tmp_path / "notes.txt")


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    assert (new_plugin("hello", tmp_path) / "blip2_hello.py").is_file()


def test_the_new_command_writes_blip2_name_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(new, ["hello"])
    assert result.exit_code == 0, result.output
    assert result.output == "wrote blip2-hello; next: cd blip2-hello && pip install -e '.[test]' && pytest\n"
    assert (tmp_path / "blip2-hello" / "tests" / "test_blip2_hello.py").is_file()
    elsewhere = CliRunner().invoke(new, ["hello", "--dir", str(tmp_path / "there")])
    assert elsewhere.exit_code == 0 and (tmp_path / "there" / "pyproject.toml").is_file()
    refused = CliRunner().invoke(new, ["hello"])
    assert isinstance(refused.exception, PluginError) and "blip2-hello: is not empty" in str(refused.exception)
