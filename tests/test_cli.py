"""The ``blip2`` command in a subprocess, as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from blip2plugins.cli import build_cli
from blip2plugins.demo import MODEL_DIR, world

from test_images import png_header_only
from test_plugins import write_distribution

ROOT = Path(__file__).resolve().parents[1]
CAPTION_KEYS = {"image", "caption", "score", "model", "model_version"}
ASK_KEYS = {"image", "question", "answer", "score", "model", "model_version"}


def blip2(*args: str, stdin: str | None = None, interruptible: bool = False,
          **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``blip2 ARGS`` with no model, plugin or CUDA choice inherited from the environment
    (``interruptible``: with SIGINT's default action, even when the tests run as a background job)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("BLIP2_MODEL", "BLIP2_PLUGINS", "BLIP2_BLOCK_PLUGINS")}
    default_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if interruptible else None
    return subprocess.run([sys.executable, "-m", "blip2plugins.cli", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env={**clean, "CUDA_VISIBLE_DEVICES": "", **env}, timeout=300,
                          preexec_fn=default_sigint)


def lines(text: str) -> list[str]:
    return text.splitlines()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 40), (220, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (40, 48), (30, 30, 220)).save(folder / "blue.jpg")
    (folder / "notes.png").write_text("not an image")
    return {"red": str(folder / "red.png"), "blue": str(folder / "blue.jpg"), "bad": str(folder / "notes.png"),
            "missing": str(folder / "missing.png")}


def test_help_lists_the_plugin_commands() -> None:
    result = blip2("--help")
    assert result.returncode == 0
    for command in ("caption", "ask", "chat", "models", "plugins", "serve"):
        assert f"  {command} " in result.stdout


def test_caption_json_lines_in_input_order(tiny_opt: Path, images: dict[str, str]) -> None:
    result = blip2("caption", "--model", str(tiny_opt), "--json", "--max-new-tokens", "4",
                   images["red"], images["blue"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    records = [json.loads(line) for line in lines(result.stdout)]
    assert [r["image"] for r in records] == [images["red"], images["blue"]]
    for record in records:
        assert set(record) == CAPTION_KEYS
        assert 0 < record["score"] <= 1
        assert record["model"] == tiny_opt.name and record["model_version"].startswith(f"{tiny_opt.name}@")


def test_caption_n_prints_one_line_per_candidate_with_progress(tiny_opt: Path, images: dict[str, str]) -> None:
    result = blip2("caption", "--model", str(tiny_opt), "-n", "2", "--beams", "2", "--max-new-tokens", "3",
                   "--progress", images["red"], images["blue"])
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in lines(result.stdout)] == [images["red"]] * 2 + [images["blue"]] * 2
    assert "0/2" in result.stderr  # the tqdm bar, on stderr only


def test_ask_json_lines(tiny_opt: Path, images: dict[str, str]) -> None:
    result = blip2("ask", "what color is the circle?", images["blue"], images["red"], "--model", str(tiny_opt),
                   "--json", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in lines(result.stdout)]
    assert [r["image"] for r in records] == [images["blue"], images["red"]]
    assert all(set(r) == ASK_KEYS and r["question"] == "what color is the circle?" for r in records)


def test_bad_images_are_reported_and_the_others_processed(tiny_opt: Path, images: dict[str, str]) -> None:
    result = blip2("ask", "how many shapes?", images["red"], images["bad"], images["missing"], images["blue"],
                   "--model", str(tiny_opt), "--max-new-tokens", "3")
    assert result.returncode == 1
    assert [line.split("\t")[0] for line in lines(result.stdout)] == [images["red"], images["blue"]]
    errors = lines(result.stderr)
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(f"blip2: {images['bad']}: not an image")
    assert errors[1] == f"blip2: {images['missing']}: file not found"


def test_folders_expand_to_their_image_files_and_an_empty_one_is_reported(tiny_opt: Path, tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("b/deeper/z.png", "b/a.jpg", "a.png"):
        Image.new("RGB", (40, 40), (200, 40, 40)).save(tmp_path / name)
    (tmp_path / "b" / "notes.txt").write_text("not an image file name: skipped")
    result = blip2("caption", str(tmp_path / "b"), str(tmp_path / "a.png"), str(tmp_path / "empty"),
                   "--model", str(tiny_opt), "--max-new-tokens", "3")
    assert result.returncode == 1
    assert [line.split("\t")[0] for line in lines(result.stdout)] == [
        str(tmp_path / "b" / "a.jpg"), str(tmp_path / "b" / "deeper" / "z.png"), str(tmp_path / "a.png")]
    assert lines(result.stderr) == [f"blip2: {tmp_path / 'empty'}: no image files in this folder"]
    alone = blip2("caption", str(tmp_path / "b" / "deeper"), "--model", str(tiny_opt), "--max-new-tokens", "3")
    assert alone.stdout.startswith(f"{tmp_path / 'b' / 'deeper' / 'z.png'}\t"), "a folder's lines name their image"


def test_files_from_stdin_streams_in_order(tiny_opt: Path, images: dict[str, str]) -> None:
    listing = f"{images['blue']}\n\n{images['missing']}\n{images['red']}\n"
    result = blip2("ask", "how many shapes?", images["red"], "--files-from", "-", "--json", "--model", str(tiny_opt),
                   "--max-new-tokens", "3", stdin=listing)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in lines(result.stdout)] == [images["red"], images["blue"], images["red"]]
    assert lines(result.stderr) == [f"blip2: {images['missing']}: file not found"]


def test_files_from_takes_any_file_name_skips_a_bom_and_expands_folders(tiny_opt: Path, images: dict[str, str],
                                                                        tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.new("RGB", (40, 40), (30, 200, 30)).save(folder / "green.png")
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + images["red"].encode() + b"\r\n/photos/caf\xe9.png\n" + bytes(folder) + b"\n"
                        + bytes(tmp_path / "empty") + b"\n")
    result = blip2("caption", "--files-from", str(listing), "--model", str(tiny_opt), "--max-new-tokens", "3")
    assert result.returncode == 1
    assert [line.split("\t")[0] for line in lines(result.stdout)] == [images["red"], str(folder / "green.png")]
    assert sorted(lines(result.stderr)) == sorted([  # the folder's line comes as the list is read, ahead of results
        "blip2: /photos/caf\\xe9.png: file not found",  # a Latin-1 name, as the OS sees it
        f"blip2: {tmp_path / 'empty'}: no image files in this folder"])


def test_names_that_are_not_utf8_or_hold_controls_print_as_one_valid_utf8_line(tiny_opt: Path, images: dict[str, str],
                                                                                tmp_path: Path) -> None:
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname\n.png")  # a byte that is not UTF-8, and a newline
    Image.open(images["red"]).save(os.fsencode(odd), "PNG")
    shown = str(tmp_path / "bad\\xffname\\n.png")
    gone = os.fsdecode(bytes(tmp_path) + b"/gone\xff\t.png")
    for env in ({"PYTHONIOENCODING": "utf-8"}, {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}):
        args = ("caption", odd, gone, images["blue"], "--model", str(tiny_opt), "--max-new-tokens", "3")
        plain = blip2(*args, **env)  # output that is not UTF-8 fails to decode here
        assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
        assert [line.split("\t")[0] for line in lines(plain.stdout)] == [shown, images["blue"]]
        assert lines(plain.stderr) == [f"blip2: {tmp_path}/gone\\xff\\t.png: file not found"]
        records = [json.loads(line) for line in lines(blip2(*args, "--json", **env).stdout)]
        assert [r["image"] for r in records] == [str(tmp_path / "bad\\xffname\n.png"), images["blue"]]


def test_a_full_disk_is_one_line(tiny_opt: Path, images: dict[str, str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    clean = {k: v for k, v in os.environ.items() if k not in ("BLIP2_MODEL", "BLIP2_PLUGINS", "BLIP2_BLOCK_PLUGINS")}
    for args in (["models"], ["caption", images["red"], images["blue"], "--model", str(tiny_opt),
                              "--max-new-tokens", "3"]):
        with open("/dev/full", "w") as full:
            result = subprocess.run([sys.executable, "-m", "blip2plugins.cli", *args], stdout=full,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    env={**clean, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
        assert result.returncode == 1
        assert result.stderr == "blip2: error: No space left on device\n"


def test_an_interrupt_while_plugins_load_is_aborted_without_a_traceback(tmp_path: Path) -> None:
    write_distribution(tmp_path, "slow-dist", "slow", "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    result = blip2("models", interruptible=True, PYTHONPATH=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "Aborted!\n")


def test_an_interrupt_while_a_command_runs_exits_130(tmp_path: Path) -> None:
    write_distribution(tmp_path, "stop-dist", "stop", '''
        import os, signal, time
        from blip2plugins.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def wait():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
    ''')
    result = blip2("wait", interruptible=True, PYTHONPATH=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "\nAborted!\n")


def test_an_image_over_pillows_pixel_limit_is_one_line(tiny_opt: Path, images: dict[str, str], tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(10_000, 10_000))  # over Pillow's warning limit and over ours
    result = blip2("caption", str(huge), images["red"], "--model", str(tiny_opt), "--max-new-tokens", "3")
    assert result.returncode == 1
    assert lines(result.stderr) == [f"blip2: {huge}: too many pixels (10000x10000 > limit 64000000)"]


def test_no_images_is_a_usage_error() -> None:
    result = blip2("caption", "--model", "no-such-model")
    assert result.returncode == 2
    assert "no images: give IMAGE arguments or --files-from FILE" in result.stderr


@pytest.mark.parametrize(("args", "flag"), [
    (["--temperature", "0", "--sample"], "--temperature"),
    (["--min-new-tokens", "9", "--max-new-tokens", "3"], "--min-new-tokens"),
    (["-n", "3"], "--num-captions"),
    (["--beams", "lots"], "--beams"),
])
def test_bad_option_is_a_usage_error(images: dict[str, str], args: list[str], flag: str) -> None:
    result = blip2("caption", images["red"], "--model", "demo", *args)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in lines(result.stderr) if line.startswith("Error:")]
    assert len(errors) == 1 and f"'{flag}'" in errors[0], result.stderr


def test_startup_plugin_error_is_one_line(tmp_path: Path) -> None:
    write_distribution(tmp_path, "typo-dist", "typo", "from blip2plugins.hookspecs import hookimpl\n\n"
                       "@hookimpl\ndef register_model(register):\n    pass\n")
    result = blip2("models", PYTHONPATH=str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert lines(result.stderr) == [result.stderr.strip()]
    assert result.stderr.startswith("blip2: error: plugin 'typo' is refused: it implements register_model")


def test_unknown_model_is_one_line(images: dict[str, str]) -> None:
    result = blip2("caption", images["red"], "--model", "no-such-model")
    assert result.returncode == 2
    assert lines(result.stderr) == [result.stderr.strip()]
    assert result.stderr.startswith("blip2: error: unknown model 'no-such-model'")


def test_demo_notice_only_without_a_model_choice(tiny_opt: Path, images: dict[str, str]) -> None:
    chosen = blip2("caption", images["red"], "--max-new-tokens", "2", BLIP2_MODEL=str(tiny_opt))
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stderr == ""
    default = blip2("caption", images["red"], "--temperature", "2")  # a usage error: no model is loaded
    notes = [line for line in lines(default.stderr) if "demo model" in line]
    assert notes == [lines(default.stderr)[0]]
    assert "--model" in notes[0] and "BLIP2_MODEL" in notes[0]


def test_demo_model_is_the_default(tmp_path: Path) -> None:
    scene = tmp_path / "scene.png"
    world.render(world.make_scene({"circle": "red", "square": "blue"})).save(scene)
    result = blip2("caption", str(scene), "--json")
    assert result.returncode == 0, result.stderr
    assert len(lines(result.stderr)) == 1 and "demo model" in result.stderr
    record = json.loads(result.stdout)
    assert record["model"] == "demo" and record["model_version"].startswith("demo@")
    assert record["caption"] == "a red circle and a blue square"


def test_chat_reads_questions_from_piped_stdin(tiny_opt: Path, images: dict[str, str]) -> None:
    questions = "what color is the circle?\nhow many shapes?\n\nnever asked\n"
    result = blip2("chat", images["red"], "--model", str(tiny_opt), "--json", "--max-new-tokens", "3", stdin=questions)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in lines(result.stdout)]
    assert [r["question"] for r in records] == ["what color is the circle?", "how many shapes?"]
    assert all(set(r) == ASK_KEYS and r["image"] == images["red"] for r in records)


def test_chat_on_a_bad_image(tiny_opt: Path, images: dict[str, str]) -> None:
    result = blip2("chat", images["missing"], "--model", str(tiny_opt), stdin="what?\n")
    assert (result.returncode, result.stdout) == (1, "")
    assert lines(result.stderr) == [f"blip2: {images['missing']}: file not found"]


def test_models_lists_presets() -> None:
    listed = blip2("models", "--json")
    assert listed.returncode == 0
    presets = {p["name"]: p for p in json.loads(listed.stdout)}
    assert presets["demo"]["source"] == str(MODEL_DIR) and presets["demo"]["family"] == "opt"
    assert presets["blip2-flan-t5-xl"]["family"] == "t5"
    assert all(set(p) == {"name", "aliases", "source", "family", "kind", "retrieval", "tasks", "description", "defaults"}
               for p in presets.values())
    assert presets["demo"]["tasks"] == ["caption", "ask", "chat", "match", "similarity", "embed"]
    assert presets["demo"]["retrieval"] == "demo-retrieval" and presets["demo-retrieval"]["kind"] == "retrieval"
    assert presets["blip2-itm-vit-g"]["tasks"] == ["match", "similarity", "embed"]
    table = lines(blip2("models").stdout)
    assert table[0].split() == ["NAME", "FAMILY", "TASKS", "SOURCE", "DESCRIPTION"]
    assert any(line.split()[:4] == ["blip2-opt-2.7b", "opt", "caption,ask,chat", "Salesforce/blip2-opt-2.7b"]
               for line in table)
    assert any(line.split()[:4] == ["blip2-itm-vit-g", "-", "match,similarity,embed", "Salesforce/blip2-itm-vit-g"]
               for line in table)


def test_plugins_json_lists_the_default_plugins() -> None:
    listed = blip2("plugins", "--json")
    assert listed.returncode == 0
    infos = {info["name"]: info for info in json.loads(listed.stdout)}
    assert infos["blip2plugins.commands"] == {"name": "blip2plugins.commands", "version": None,
                                             "hooks": ["register_commands"], "builtin": True,
                                             "status": "loaded", "reason": None}
    assert infos["blip2plugins.presets"]["hooks"] == ["register_models"]


@pytest.mark.parametrize("code, env, expected", [
    ("_idle_threads_sleep(); import torch", {}, "PASSIVE"),
    ("_idle_threads_sleep(); import torch", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's choice stands
    ("import torch; _idle_threads_sleep()", {}, "None"),  # too late to matter: left alone
])
def test_the_command_lets_idle_openmp_threads_sleep(code: str, env: dict[str, str], expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    script = f"import os; from blip2plugins.cli import _idle_threads_sleep; {code}; print(os.environ.get('OMP_WAIT_POLICY'))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**clean, **env}, timeout=120)
    assert result.stdout.strip() == expected, result.stderr


def test_chat_line_that_is_not_utf8_fails_alone(images: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "blip2plugins.cli", "chat", images["red"], "--model", "demo"],
                          input=b"what \xff color?\nwhat color?\n", capture_output=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1 and b"Traceback" not in done.stderr
    assert b"is not valid UTF-8 text" in done.stderr and len(done.stdout.splitlines()) == 1


def test_an_error_echoing_a_huge_argument_is_cut(images: dict[str, str]) -> None:
    result = blip2("caption", images["red"], "--model", "x" * 5000)
    assert result.returncode in (1, 2) and len(result.stderr) < 1100 and lines(result.stderr) == [result.stderr.strip()]


def test_main_in_process_reports_an_os_error_without_a_stdout_descriptor(images: dict[str, str], capsys,
                                                                          monkeypatch) -> None:
    import errno
    import io

    from blip2plugins.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/disk")

    monkeypatch.setattr("blip2plugins.cli_options.load_host", full)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # as under a test runner: no file descriptor
    with pytest.raises(SystemExit) as exit_:
        main(["caption", images["red"], "--model", "demo"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err == "blip2: error: /full/disk: No space left on device\n"


@pytest.mark.parametrize("args", [
    ["train", "--data", "x.jsonl", "--store", ""],
    ["train", "--data", "x.jsonl", "--out", ""],
    ["adapters", "list", "--store", ""],
    ["index", "info", ""],
    ["train", "--data", "x.jsonl", "--store", "a\0b"],
])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 2 and ("an empty path" in result.output or "a NUL byte" in result.output), result.output
    assert list(tmp_path.iterdir()) == []  # nothing written where the process stands


def test_plain_caption_and_ask_print_what_process_result_made_of_every_candidate() -> None:
    import dataclasses
    from types import SimpleNamespace

    from blip2plugins import Result, hookimpl
    from blip2plugins.testing import registered, run_blip2

    def tag(task: str, result: Result) -> Result:
        return dataclasses.replace(result, text=f"{result.text} #{task}")

    image = str(ROOT / "examples" / "images" / "red-circle_blue-square_on-white.png")
    with registered(SimpleNamespace(process_result=hookimpl(tag)), "tag"):
        one = run_blip2("caption", "--model", "demo", image)
        beams = run_blip2("caption", "--model", "demo", "-n", "2", "--beams", "2", image)
        asked = run_blip2("ask", "what color is the circle?", "--model", "demo", image)
        as_json = run_blip2("caption", "--model", "demo", "--json", "-n", "2", "--beams", "2", image)
    assert one.exit_code == beams.exit_code == asked.exit_code == as_json.exit_code == 0, one.output
    assert one.stdout.endswith(" #caption\n") and asked.stdout == "red #ask\n"
    assert [line.endswith(" #caption") for line in beams.stdout.splitlines()] == [True, True]
    record = json.loads(as_json.stdout)
    assert record["caption"] == beams.stdout.splitlines()[0] == one.stdout.strip()
    assert [c["text"] for c in record["candidates"]] == beams.stdout.splitlines()
