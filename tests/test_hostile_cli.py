"""Hostile arguments to the `blip2` command: images, texts, numbers, models, adapters, training options.
In-process through ``blip2plugins.cli.main`` (the demo host is shared), plus real subprocess runs of
``.venv/bin/blip2``: exit status 0, 1 or 2, one error line, never a traceback, never a hang."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile import checks, corpus, fixtures

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def shared_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    fixtures.share_hosts(monkeypatch)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return corpus.image_folder(tmp_path_factory.mktemp("cli-images"))


IMAGE_KEYS = [c.id for c in corpus.image_bytes()] + ["png-named-txt", "newline-name", "non-utf8-name", "directory",
                                                     "fifo", "symlink-dev-zero", "dangling-symlink", "symlink-loop"]


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_image_files(images: dict[str, Path], key: str) -> None:
    bad, good = str(images[key]), str(images["good"])
    for args in (["caption", good, bad], ["ask", "how many shapes?", bad, "--json"], ["match", bad, "a red circle"],
                 ["chat", bad]):
        run = checks.cli(args, stdin="how many shapes?\n")
        checks.assert_cli_clean(run, f"{args[0]} {key}")


@pytest.mark.parametrize("case", [c for c in corpus.image_objects() if isinstance(c.value, str) and c.value], ids=lambda c: c.id)
def test_image_references(case: corpus.Case) -> None:
    checks.assert_cli_clean(checks.cli(["caption", case.value]), f"caption {case.id}")


def _flag_cases() -> list:
    flags = ["--max-new-tokens", "--min-new-tokens", "--beams", "--temperature", "--top-p", "--top-k",
             "--repetition-penalty", "--no-repeat-ngram-size", "--seed", "--num-captions"]
    return [pytest.param(flag, n.value, id=f"{flag}={n.id}") for flag in flags for n in corpus.cli_numbers()]


@pytest.mark.parametrize(("flag", "value"), _flag_cases())
def test_generation_flags(images: dict[str, Path], flag: str, value: str) -> None:
    sample = ["--sample"] if flag in ("--temperature", "--top-p", "--top-k", "--seed", "--num-captions") else []
    checks.assert_cli_clean(checks.cli(["caption", str(images["good"]), flag, value, *sample]), f"caption {flag} {value[:20]}")


@pytest.mark.parametrize("case", [c for c in corpus.texts() if isinstance(c.value, str)], ids=lambda c: c.id)
def test_texts(images: dict[str, Path], case: corpus.Case) -> None:
    good = str(images["good"])
    text = case.value.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") if not any("\ud800" <= c <= "\udfff" for c in case.value) \
        else "a \udcff b"  # what an argv byte that is not UTF-8 becomes
    for args in (["caption", good, "--prompt", text], ["ask", text, good], ["match", good, text]):
        checks.assert_cli_clean(checks.cli(args), f"{args[0]} with text {case.id}")
    checks.assert_cli_clean(checks.cli(["chat", good], stdin=(text + "\n").encode("utf-8", "surrogateescape")),
                            f"chat with text {case.id}")


FILES_FROM = {"binary": bytes(range(256)) * 4, "nul": b"a\x00b.png\n", "empty": b"", "bom-only": b"\xef\xbb\xbf",
              "huge-line": b"x" * 2_000_000 + b"\n", "many-missing": b"".join(b"/no/%d.png\n" % i for i in range(3000)),
              "crlf": b"/no.png\r\n\r\n", "utf16": "a.png\n".encode("utf-16")}


@pytest.mark.parametrize("name", list(FILES_FROM))
def test_files_from(tmp_path: Path, name: str) -> None:
    listing = tmp_path / "list.txt"
    listing.write_bytes(FILES_FROM[name])
    checks.assert_cli_clean(checks.cli(["caption", "--files-from", str(listing)]), f"caption --files-from {name}")
    checks.assert_cli_clean(checks.cli(["caption", "--files-from", "-"], stdin=FILES_FROM[name]), f"--files-from - {name}")


@pytest.mark.parametrize("args", [
    ["--model", ""], ["--model", "/dev/null"], ["--model", "\udcff"], ["--model", "x" * 5000], ["--device", "cuda:99"],
    ["--device", "nan"], ["--device", ""], ["--dtype", "float8"], ["--quantize", "3bit"], ["--adapter", ""],
    ["--adapter", "nope@" + "1" * 4400], ["--adapter", "/dev/null"], ["--num-captions", "2"], ["--beams", "40"]],
    ids=lambda a: checks.short(a, 30))
def test_model_flags(images: dict[str, Path], args: list[str]) -> None:
    checks.assert_cli_clean(checks.cli(["caption", str(images["good"]), *args], env={"HF_HUB_OFFLINE": "1"}), f"caption {args}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_dataset(tmp_path_factory.mktemp("train-data"), n=4)


TRAIN_OPTIONS = {
    "seed-2**70": ["--seed", str(2**70)], "seed-negative": ["--seed", "-1"], "lora-dropout-nan": ["--lora-dropout", "nan"],
    "lora-extra-bad-regex": ["--lora-extra", "("], "lora-extra-everything": ["--lora-extra", ".*"],
    "lora-extra-nothing": ["--lora-extra", "^$"], "lr-nan": ["--lr", "nan"], "lr-inf": ["--lr", "inf"],
    "margin-nan": ["--margin", "nan"], "margin-inf": ["--margin", "inf"], "eval-split-nan": ["--eval-split", "nan"],
    "metric-nul": ["--metric", "\x00"], "metric-unknown": ["--metric", "accuracy"], "name-traversal": ["--name", "../x"],
    "name-long": ["--name", "a" * 300], "name-upper": ["--name", "ABC"], "steps-huge": ["--steps", "9" * 5000],
    "warmup-huge": ["--warmup", str(2**70)], "store-dev-null": ["--store", "/dev/null"],
    "checkpoint-dir-dev-null": ["--checkpoint-dir", "/dev/null", "--checkpoint-every", "1"],
    "resume-without-checkpoints": ["--resume"], "method-full-t5-options": ["--method", "full", "--lora-mlp"],
    "mixed-precision-fp16-cpu": ["--mixed-precision", "fp16"], "device-bogus": ["--device", "tpu:7"],
    "two-data-files-same": ["--data", "{data}"], "out-and-store": ["--out", "{tmp}/out"],
    "out-is-a-file": ["--out", "{data}", "--store", ""], "data-dev-null": ["--data", "/dev/null"],
}


@pytest.mark.parametrize("name", list(TRAIN_OPTIONS))
def test_train_options(dataset: Path, tmp_path: Path, name: str) -> None:
    extra = [a.format(data=dataset, tmp=tmp_path) for a in TRAIN_OPTIONS[name]]
    args = ["train", "--data", str(dataset), "--store", str(tmp_path / "store"), "--steps", "1", "--batch-size", "4",
            "--warmup", "0", "--eval-split", "0.25", "--device", "cpu", *extra]
    if "--store" in extra and extra[extra.index("--store") + 1] == "":
        i = args.index("--store")
        del args[i:i + 2]
        j = len(args) - len(extra) + extra.index("--store") - 2
        del args[j:j + 2]
    checks.assert_cli_clean(checks.cli(args), f"train {name}")


@pytest.mark.parametrize("checkpoint", ["garbage-files", "truncated-state", "nested-json"])
def test_train_resume_from_damaged_checkpoints(dataset: Path, tmp_path: Path, checkpoint: str) -> None:
    folder = tmp_path / "ckpt"
    step = folder / "step-00000001"
    step.mkdir(parents=True)
    if checkpoint == "garbage-files":
        for name in ("model.safetensors", "optimizer.bin", "state.json", "trainer_state.json"):
            (step / name).write_bytes(b"\x00garbage")
        (folder / "latest").write_text("step-00000001")
    elif checkpoint == "truncated-state":
        (folder / "state.json").write_text('{"step": 1, ')
    else:
        (folder / "state.json").write_text(corpus.deep_json(100_000))
    run = checks.cli(["train", "--data", str(dataset), "--store", str(tmp_path / "store"), "--steps", "2", "--batch-size", "4",
                      "--warmup", "0", "--eval-split", "0.25", "--device", "cpu", "--checkpoint-dir", str(folder),
                      "--checkpoint-every", "1", "--resume"])
    checks.assert_cli_clean(run, f"train --resume from {checkpoint}")


# -- real subprocesses ------------------------------------------------------------------------------------------

def test_subprocess_caption_fifo_and_dev_zero(images: dict[str, Path]) -> None:
    proc = checks.blip2("caption", str(images["good"]), str(images["fifo"]), "/dev/zero", str(images["png-bomb-header-100k"]),
                        str(images["truncated-png-half"]), timeout=90)
    checks.assert_proc_clean(proc, "blip2 caption good fifo /dev/zero bomb truncated")
    assert proc.code == 1 and proc.stdout.count("\n") == 1, proc.output


def test_subprocess_promote_5000_digit_version(tmp_path: Path) -> None:
    store, _ = fixtures.copy_store(tmp_path / "store")
    proc = checks.blip2("adapters", "promote", "9" * 5000, "--name", "hostile", "--model", "demo", "--store", str(store), timeout=30)
    checks.assert_proc_clean(proc, "blip2 adapters promote <5000 digits>")


def test_subprocess_train_bad_lora_extra(dataset: Path, tmp_path: Path) -> None:
    proc = checks.blip2("train", "--data", str(dataset), "--store", str(tmp_path / "s"), "--steps", "1", "--batch-size", "4",
                        "--lora-extra", "(", "--device", "cpu", timeout=90)
    checks.assert_proc_clean(proc, "blip2 train --lora-extra '('")


def test_subprocess_train_huge_lora_rank_is_bounded(dataset: Path, tmp_path: Path) -> None:
    proc = checks.blip2("train", "--data", str(dataset), "--store", str(tmp_path / "s"), "--steps", "1", "--batch-size", "4",
                        "--lora-rank", str(10**9), "--device", "cpu", timeout=90, memory=4 << 30)
    checks.assert_proc_clean(proc, "blip2 train --lora-rank 10**9")


def test_subprocess_train_on_a_full_disk(dataset: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC."""
    proc = checks.blip2("train", "--data", str(dataset), "--store", str(tmp_path / "s"), "--steps", "1", "--batch-size", "4",
                        "--warmup", "0", "--eval-split", "0.25", "--device", "cpu", timeout=120, file_size=64 * 1024)
    checks.assert_proc_clean(proc, "blip2 train on a full disk")
    assert not list((tmp_path / "s").glob("*/default/v0001")) or proc.code == 0


def test_subprocess_help_and_version_with_hostile_env(tmp_path: Path) -> None:
    for args, env in ((["--help"], {"BLIP2_MODEL": "\udcff"}), (["models", "--json"], {"BLIP2_ADAPTER_STORE": "/dev/null"}),
                      (["adapters", "list"], {"BLIP2_ADAPTER_STORE": str(tmp_path / "\udcff")}),
                      (["plugins"], {"BLIP2_PLUGINS_ALLOW": "\x01" * 1000})):
        safe_env = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in env.items()}
        proc = checks.blip2(*args, timeout=60, env=safe_env)
        checks.assert_proc_clean(proc, f"blip2 {' '.join(args)} with {list(env)}")
