"""The plugin system for real: loading, allow/block lists, refusals, and every hook's semantics."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import click
import pytest
from click.testing import CliRunner
from PIL import Image

from blip2plugins import plugins
from blip2plugins.cli import build_cli
from blip2plugins.errors import ImageError, PluginError
from blip2plugins.hookspecs import hookimpl
from blip2plugins.images import load_image
from blip2plugins.types import AdapterVersion, ImageSource, ModelPreset, Result, ServeCommand

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "blip2-example-plugin"


pytestmark = pytest.mark.usefixtures("fresh_plugins")


def write_distribution(folder: Path, dist: str, entry_point: str, source: str, version: str = "1.2.3") -> str:
    """Write an installed-looking distribution (module + dist-info with an entry point) into ``folder``."""
    module = f"blip2_test_{dist.replace('-', '_')}"
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[blip2plugins]\n{entry_point} = {module}\n")
    return module


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: set[str]) -> Iterator[Callable[..., str]]:
    """``site(dist, entry_point, source)``: a distribution on ``sys.path``, found through entry points
    (the only one the plugin manager sees, with the others the test adds)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    modules: list[str] = []

    def add(dist: str, entry_point: str, source: str, version: str = "1.2.3") -> str:
        modules.append(write_distribution(tmp_path, dist, entry_point, source, version))
        fresh_plugins.add(dist)
        return modules[-1]

    yield add
    for module in modules:
        sys.modules.pop(module, None)


PRESET_PLUGIN = """
    from blip2plugins.hookspecs import hookimpl
    from blip2plugins.types import ModelPreset

    @hookimpl
    def register_models(register):
        register(ModelPreset(name="from-entry-point", source="org/model"))
"""


def plugin(**hooks: Callable[..., object]) -> SimpleNamespace:
    """An in-process plugin object whose attributes are the given hook implementations."""
    return SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def names() -> set[str]:
    """The plugins loaded now."""
    return {info.name for info in plugins.plugin_info() if info.status == "loaded"}


def test_default_plugins_load() -> None:
    infos = {info.name: info for info in plugins.plugin_info()}
    assert set(plugins.DEFAULT_PLUGINS) <= set(infos)
    assert all(infos[name].builtin and infos[name].version is None for name in plugins.DEFAULT_PLUGINS)
    assert "register_models" in infos["blip2plugins.presets"].hooks
    assert "register_commands" in infos["blip2plugins.commands"].hooks
    assert plugins.model_presets()["demo"].family == "opt"


def test_external_plugin_is_found_through_its_entry_point(site: Callable[..., str]) -> None:
    site("preset-dist", "presets-ext", PRESET_PLUGIN, version="2.5")
    info = {i.name: i for i in plugins.plugin_info()}["presets-ext"]
    assert (info.version, info.builtin, info.hooks) == ("2.5", False, ("register_models",))
    assert plugins.model_presets()["from-entry-point"].source == "org/model"


@pytest.mark.parametrize(("allow", "loaded"), [("presets-ext", True), ("other, presets-ext ", True),
                                                ("other", False), ("", False)])
def test_allow_list_loads_only_named_entry_points(site: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
                                                  allow: str, loaded: bool) -> None:
    site("preset-dist", "presets-ext", PRESET_PLUGIN)
    monkeypatch.setenv("BLIP2_PLUGINS", allow)
    assert ("presets-ext" in names()) is loaded
    assert ("from-entry-point" in plugins.model_presets()) is loaded
    assert set(plugins.DEFAULT_PLUGINS) <= names()  # the allow-list never drops built-ins


def test_block_list_skips_entry_points_and_default_plugins(site: Callable[..., str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    site("preset-dist", "presets-ext", PRESET_PLUGIN)
    monkeypatch.setenv("BLIP2_BLOCK_PLUGINS", "presets-ext,blip2plugins.presets")
    assert "presets-ext" not in names() and "blip2plugins.presets" not in names()
    assert plugins.model_presets() == {}
    monkeypatch.setenv("BLIP2_PLUGINS", "presets-ext")  # blocking wins over allowing
    plugins.reset()
    assert "presets-ext" not in names()


def test_broken_plugin_is_named_with_how_to_skip_it(site: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    site("broken-dist", "broken", "import no_such_module_anywhere\n")
    with pytest.raises(PluginError, match=r"'broken'.*no_such_module_anywhere.*BLIP2_BLOCK_PLUGINS=broken"):
        plugins.get_plugin_manager()
    monkeypatch.setenv("BLIP2_BLOCK_PLUGINS", "broken")
    plugins.reset()
    assert "broken" not in names()


def test_a_command_of_a_plugin_left_out_says_why(site: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    site("hello-dist", "hello", HELLO_COMMAND_PLUGIN)
    runner = CliRunner()
    assert runner.invoke(build_cli(), ["hello", "you"]).output == "hello you\n"
    monkeypatch.setenv("BLIP2_PLUGINS", "")
    plugins.reset()
    missing = runner.invoke(build_cli(), ["hello", "you"])
    assert missing.exit_code == 2
    assert "No such command 'hello'. Installed plugins that are not loaded: " in missing.output
    assert "hello (not named in BLIP2_PLUGINS)" in missing.output
    assert "Usage:" in runner.invoke(build_cli(), ["serve", "nope"]).output


HELLO_COMMAND_PLUGIN = """
    import click
    from blip2plugins.hookspecs import hookimpl

    @click.command()
    @click.argument("who")
    def hello(who):
        click.echo(f"hello {who}")

    @hookimpl
    def register_commands(cli):
        cli.add_command(hello)
"""


def test_every_broken_plugin_is_listed_and_work_refuses_naming_them_all(site: Callable[..., str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site("preset-dist", "presets-ext", PRESET_PLUGIN)
    site("broken-dist", "broken", "import no_such_module_anywhere\n", version="0.1")
    site("typo-dist", "typo", "from blip2plugins.hookspecs import hookimpl\n\n"
                              "@hookimpl\ndef register_model(register):\n    pass\n")
    site("other-dist", "other", PRESET_PLUGIN.replace("from-entry-point", "other-preset"))
    monkeypatch.setenv("BLIP2_PLUGINS", "presets-ext,broken,typo")
    infos = {info.name: info for info in plugins.plugin_info()}  # the diagnostics never raise
    assert infos["presets-ext"].status == "loaded" and infos["presets-ext"].hooks == ("register_models",)
    assert (infos["broken"].status, infos["broken"].version) == ("broken", "0.1")
    assert "no_such_module_anywhere" in infos["broken"].reason
    assert infos["typo"].status == "broken" and "register_model, which matches no hook" in infos["typo"].reason
    assert (infos["other"].status, infos["other"].reason) == ("not loaded", "not named in BLIP2_PLUGINS")
    with pytest.raises(PluginError) as refused:  # anything else: one error naming both, how to skip them
        plugins.model_presets()
    message = str(refused.value)
    assert "no_such_module_anywhere" in message and "register_model" in message
    assert "BLIP2_BLOCK_PLUGINS=broken,typo to skip them" in message
    monkeypatch.setenv("BLIP2_BLOCK_PLUGINS", "broken,typo")
    plugins.reset()
    assert "from-entry-point" in plugins.model_presets()
    reasons = {i.name: i.reason for i in plugins.plugin_info() if i.status != "loaded"}
    assert {name: reasons[name] for name in ("broken", "typo", "other")} == {
        "broken": "blocked by BLIP2_BLOCK_PLUGINS", "typo": "blocked by BLIP2_BLOCK_PLUGINS",
        "other": "not named in BLIP2_PLUGINS"}


def test_the_cli_diagnostics_run_beside_broken_plugins(site: Callable[..., str]) -> None:
    site("broken-dist", "broken", "import no_such_module_anywhere\n")
    site("broken2-dist", "broken2", "raise RuntimeError('boom at import')\n")
    runner = CliRunner()
    helped = runner.invoke(build_cli(), ["--help"])
    assert helped.exit_code == 0 and "caption" in helped.output
    listed = runner.invoke(build_cli(), ["plugins"])
    assert listed.exit_code == 1  # a broken plugin is worth a failing status in scripts
    rows = {line.split()[0]: line for line in listed.output.splitlines()}
    assert "BROKEN: plugin 'broken'" in rows["broken"] and "no_such_module_anywhere" in rows["broken"]
    assert "BROKEN: plugin 'broken2'" in rows["broken2"] and "boom at import" in rows["broken2"]
    assert "register_models" in rows["blip2plugins.presets"]
    models = runner.invoke(build_cli(), ["models"])
    assert models.exit_code != 0 and isinstance(models.exception, PluginError)
    assert "BLIP2_BLOCK_PLUGINS=broken,broken2 to skip them" in str(models.exception)


def test_implementation_matching_no_hook_is_refused() -> None:
    typo = plugin(register_model=lambda register: register(ModelPreset("never", "x")))
    refused = r"plugin 'typo' is refused: it implements register_model, which matches no hook"
    with pytest.raises(PluginError, match=refused):
        plugins.register_plugin(typo, name="typo")
    assert "typo" not in names()
    assert "never" not in plugins.model_presets()


def test_implementation_with_unknown_argument_is_refused() -> None:
    bad = plugin(register_models=lambda register, registry: None)
    with pytest.raises(PluginError, match=r"(?s)plugin 'bad' is refused.*hook 'register_models'.*registry"):
        plugins.register_plugin(bad, name="bad")
    assert "bad" not in names()


def test_plugin_may_take_fewer_arguments_than_the_spec() -> None:
    seen: list[str] = []
    plugins.register_plugin(plugin(process_result=lambda task: seen.append(task)), name="few")
    result = Result("ask", "yes", 0.9, "m", "m@1")
    assert plugins.process_result("ask", result) is result
    assert seen == ["ask"]


def test_hook_register_models_later_registration_overrides() -> None:
    builtin_demo = plugins.model_presets()["demo"]
    first = plugin(register_models=lambda register: [
        register(ModelPreset("demo", "first/demo")),
        register(ModelPreset("shared", "first/shared", aliases=("alias",))),
        register(ModelPreset("twice", "first/twice-1")),
        register(ModelPreset("twice", "first/twice-2")),
    ])
    second = plugin(register_models=lambda register: register(ModelPreset("shared", "second/shared")))
    plugins.register_plugin(first, name="first")
    plugins.register_plugin(second, name="second")
    presets = plugins.model_presets()
    assert presets["demo"].source == "first/demo" != builtin_demo.source
    assert presets["shared"].source == "second/shared"
    assert presets["alias"].source == "first/shared"  # an alias stays until something re-registers it
    assert presets["twice"].source == "first/twice-2"  # within one plugin too, the later one wins
    assert presets["blip2-opt-2.7b"].source == "Salesforce/blip2-opt-2.7b"
    plugins.unregister_plugin("first")
    assert plugins.model_presets()["demo"] == builtin_demo


def _colour_source(name: str, colour: str, scheme: str = "colour") -> ImageSource:
    return ImageSource(name=name, scheme=scheme, load=lambda ref, limits: Image.new("RGB", (8, 8), colour))


def test_hook_register_image_sources_order() -> None:
    builtin = [source.name for source in plugins.image_sources()]
    plugins.register_plugin(plugin(register_image_sources=lambda register: [
        register(_colour_source("a1", "red")), register(_colour_source("a2", "red", scheme="other")),
    ]), name="a")
    plugins.register_plugin(plugin(register_image_sources=lambda register: register(_colour_source("b", "blue"))),
                            name="b")
    assert [source.name for source in plugins.image_sources()] == ["b", "a1", "a2", *builtin]
    # Both plugins claim "colour:"; the loader takes the first source that does.
    assert load_image("colour:anything").getpixel((0, 0)) == (0, 0, 255)
    plugins.unregister_plugin("b")
    assert load_image("colour:anything").getpixel((0, 0)) == (255, 0, 0)


def _tagger(tag: str) -> Callable[[str, Result], Result]:
    return lambda task, result: dataclasses.replace(result, text=f"{result.text}+{tag}")


def test_hook_process_result_is_chained_in_call_order() -> None:
    seen: list[str | None] = []
    plugins.register_plugin(plugin(process_result=_tagger("A")), name="A")
    plugins.register_plugin(plugin(process_result=_tagger("B")), name="B")
    plugins.register_plugin(plugin(process_result=lambda task, result: seen.append(result.text)), name="None")
    out = plugins.process_result("caption", Result("caption", "x", 0.5, "m", "m@1"))
    assert seen == ["x"]  # called first (last registered), and returning None changes nothing
    assert out.text == "x+B+A"


def test_hook_process_result_that_fails_fails_only_its_item(tiny_opt: Path) -> None:
    from blip2plugins.host import Host

    def picky(task: str, result: Result) -> Result | None:
        if "raise" in result.prompt:
            raise RuntimeError("cannot post-process this")
        return "a bare string" if "string" in result.prompt else None  # type: ignore[return-value]

    plugins.register_plugin(plugin(process_result=picky), name="picky")
    image = Image.new("RGB", (32, 32), "red")
    with Host.load(str(tiny_opt)) as host:
        results = host.caption([image] * 3, prompt=["fine", "raise", "string"], max_new_tokens=3)
        assert results[0].ok
        assert results[1].error == ("plugin 'picky' failed in process_result: RuntimeError('cannot post-process "
                                    "this') (set BLIP2_BLOCK_PLUGINS=picky to skip it)")
        assert results[2].error == "plugin 'picky' returned str from process_result; expected a Result or None"
        assert host.caption(image, prompt="fine", max_new_tokens=3).ok, "the host still serves"


def test_hook_process_result_tryfirst_and_failed_items() -> None:
    calls: list[str] = []

    def first(task: str, result: Result) -> Result:
        calls.append("first")
        return dataclasses.replace(result, text=f"{result.text}+first")

    plugins.register_plugin(SimpleNamespace(process_result=hookimpl(tryfirst=True)(first)), name="first")
    plugins.register_plugin(plugin(process_result=_tagger("late")), name="late")
    assert plugins.process_result("ask", Result("ask", "x", 0.5, "m", "m@1")).text == "x+first+late"
    failed = Result("ask", None, None, "m", "m@1", error="bad image")
    calls.clear()
    assert plugins.process_result("ask", failed) is failed
    assert calls == []


def test_hook_register_serve_commands_reach_blip2_serve() -> None:
    @click.command()
    @click.option("--port", type=int, default=1)
    def echo(port: int) -> None:
        """Echo server."""
        click.echo(f"serving on {port}")

    plugins.register_plugin(plugin(register_serve_commands=lambda register: register(
        ServeCommand("echo", echo, "An echo server for tests"))), name="echo")
    runner = CliRunner()
    listed = runner.invoke(build_cli(), ["serve", "--help"])
    assert listed.exit_code == 0
    assert "echo" in listed.output and "An echo server for tests" in listed.output
    served = runner.invoke(build_cli(), ["serve", "echo", "--port", "8123"])
    assert (served.exit_code, served.output) == (0, "serving on 8123\n")
    assert runner.invoke(build_cli(), ["serve", "nope"]).exit_code == 2


def test_hook_register_commands_adds_a_command() -> None:
    def register_commands(cli: click.Group) -> None:
        @cli.command()
        @click.argument("who")
        def hello(who: str) -> None:
            """Greet WHO."""
            click.echo(f"hello {who}")

    plugins.register_plugin(plugin(register_commands=register_commands), name="hello")
    runner = CliRunner()
    assert "Greet WHO." in runner.invoke(build_cli(), ["--help"]).output
    result = runner.invoke(build_cli(), ["hello", "world"])
    assert (result.exit_code, result.output) == (0, "hello world\n")


ADAPTER = AdapterVersion(name="captions", version="v3", path="/adapters/captions/v3", method="lora",
                         base_model="demo", metrics={"cider": 1.2})


def _notify_listeners(hook: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Fire ``hook`` at two listeners registered around one that raises."""
    seen: list[str] = []

    def down(adapter: AdapterVersion) -> None:
        raise ConnectionError("chat server down")

    plugins.register_plugin(plugin(**{hook: lambda adapter: seen.append(f"early {adapter.version}")}), name="early")
    plugins.register_plugin(plugin(**{hook: down}), name="flaky")
    plugins.register_plugin(plugin(**{hook: lambda adapter: seen.append(f"late {adapter.version}")}), name="late")
    with caplog.at_level("ERROR", logger="blip2plugins.plugins"):
        plugins.notify(hook, ADAPTER)
    assert f"plugin 'flaky' failed in {hook}: ConnectionError('chat server down')" in caplog.text
    return seen


def test_hook_training_finished_reaches_every_plugin_even_after_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    """The run is over when the event fires: a failing listener is logged, the others still hear of it.
    (tests/test_finetune.py checks that training fires it.)"""
    assert _notify_listeners("training_finished", caplog) == ["late v3", "early v3"]


def test_hook_adapter_promoted_reaches_every_plugin_even_after_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    """(tests/test_store.py checks that promotion fires it.)"""
    assert _notify_listeners("adapter_promoted", caplog) == ["late v3", "early v3"]


def test_a_register_hook_that_raises_is_named_with_how_to_skip_it() -> None:
    def broken(register: Callable[[ModelPreset], None]) -> None:
        raise KeyError("no config")

    plugins.register_plugin(plugin(register_models=broken), name="broken-presets")
    with pytest.raises(PluginError, match=r"plugin 'broken-presets' failed in register_models: KeyError\('no config'\) "
                                          r"\(set BLIP2_BLOCK_PLUGINS=broken-presets to skip it\)"):
        plugins.model_presets()
    plugins.unregister_plugin("broken-presets")
    plugins.register_plugin(plugin(register_commands=lambda cli: 1 / 0), name="broken-commands")
    with pytest.raises(PluginError, match="plugin 'broken-commands' failed in register_commands: ZeroDivisionError"):
        build_cli()


@pytest.mark.parametrize("hook, item", [
    ("register_models", {"name": "x"}),
    ("register_image_sources", ("s3", None)),
    ("register_serve_commands", "serve-me"),
])
def test_registering_the_wrong_type_is_refused_naming_the_plugin(hook: str, item: object) -> None:
    plugins.register_plugin(plugin(**{hook: lambda register: register(item)}), name="sloppy")
    lookup = {"register_models": plugins.model_presets, "register_image_sources": plugins.image_sources,
              "register_serve_commands": plugins.serve_commands}[hook]
    with pytest.raises(PluginError, match=rf"plugin 'sloppy' registered .* in {hook}; expected a"):
        lookup()


def test_reset_forgets_what_plugins_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "demo" in plugins.model_presets()
    monkeypatch.setenv("BLIP2_BLOCK_PLUGINS", "blip2plugins.presets")
    plugins.reset()
    assert plugins.model_presets() == {}


def test_hook_wrappers_and_taken_names_are_refused() -> None:
    def wrapping(task: str, result: Result) -> Iterator[None]:
        return (yield)

    wrapper = SimpleNamespace(process_result=hookimpl(wrapper=True)(wrapping))
    with pytest.raises(PluginError, match="plugin 'wrapping' is refused: it wraps process_result"):
        plugins.register_plugin(wrapper, name="wrapping")
    assert "wrapping" not in names()
    plugins.register_plugin(plugin(process_result=lambda result: None), name="taken")
    with pytest.raises(PluginError, match="plugin 'taken' is refused: a plugin of that name is already registered"):
        plugins.register_plugin(plugin(process_result=lambda result: None), name="taken")


def test_an_allow_list_name_that_no_plugin_provides_is_reported(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("BLIP2_PLUGINS", "presets-ext-typo")
    with caplog.at_level("WARNING", logger="blip2plugins.plugins"):
        plugins.get_plugin_manager()
    assert "BLIP2_PLUGINS names presets-ext-typo, which no installed plugin provides" in caplog.text


def test_an_image_source_whose_predicate_raises_is_an_image_error() -> None:
    source = ImageSource(name="picky", matches=lambda ref: 1 / 0, load=lambda ref, limits: b"")
    plugins.register_plugin(plugin(register_image_sources=lambda register: register(source)), name="picky")
    with pytest.raises(ImageError, match=r"photo\.png: image source 'picky' failed to say whether it handles it"):
        load_image("photo.png")


def _blip2(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (plugins.ENV_ALLOW, plugins.ENV_BLOCK)}
    return subprocess.run([sys.executable, "-m", "blip2plugins.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


@pytest.fixture
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plugin pip-installed into a folder of its own, which the subprocesses see through
    PYTHONPATH: the environment the other tests run in is never changed (built from a copy, so the
    repo stays clean)."""
    pytest.importorskip("setuptools", reason="building the example plugin without isolation needs setuptools")
    source = shutil.copytree(EXAMPLE, tmp_path / "example")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True, timeout=300)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))


def test_example_plugin_installs_and_is_found_through_entry_points(installed_example: None) -> None:
    listed = _blip2("plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    example = {info["name"]: info for info in json.loads(listed.stdout)}["example"]
    assert example == {"name": "example", "version": "0.1.0", "builtin": False,
                       "hooks": ["register_image_sources", "register_models"], "status": "loaded", "reason": None}
    models = _blip2("models", "--json")
    assert models.returncode == 0, models.stderr
    preset = {p["name"]: p for p in json.loads(models.stdout)}["demo-greedy-short"]
    assert preset["family"] == "opt" and preset["defaults"]["max_new_tokens"] == 12
    script = ("from blip2plugins.images import load_image; im = load_image('shapes:red-circle,blue-square'); "
              "print(im.size, im.getpixel((16, 16)), im.getpixel((46, 20)))")
    drawn = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           check=True)
    assert drawn.stdout.strip() == "(64, 64) (255, 0, 0) (0, 51, 255)"


def test_blip2_plugins_new_writes_a_project(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(build_cli(), ["plugins", "new", "my-thing", "--dir", str(tmp_path / "p")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "p" / "pyproject.toml").read_text().count('my-thing = "blip2_my_thing"') == 1
    again = runner.invoke(build_cli(), ["plugins", "new", "my-thing", "--dir", str(tmp_path / "p")])
    assert again.exit_code != 0 and "is not empty" in str(again.exception)
    listed = runner.invoke(build_cli(), ["plugins", "--json"])  # the group still lists without a subcommand
    assert listed.exit_code == 0 and "blip2plugins.commands" in listed.output
