"""The adapter store under hostile files (tampered version.json, CURRENT, MODEL.json, odd folders) and
hostile arguments, through the API and `blip2 adapters`: StoreError with one line, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from blip2plugins.store import AdapterStore

from hostile import checks, corpus, fixtures

pytestmark = pytest.mark.timeout(60)

NAME = "hostile"
BASE = "demo"


def weights(folder: Path) -> None:
    (folder / "qformer.safetensors").write_bytes(b"weights")


def operations(store: AdapterStore) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("names()", lambda: store.names()),
        ("names(demo)", lambda: store.names(BASE)),
        ("versions", lambda: store.versions(BASE, NAME)),
        ("get(v1)", lambda: store.get(BASE, NAME, "v0001")),
        ("latest", lambda: store.latest(BASE, NAME)),
        ("current", lambda: store.current(BASE, NAME)),
        ("resolve(name)", lambda: store.resolve(BASE, NAME)),
        ("resolve(name@1)", lambda: store.resolve(BASE, f"{NAME}@1")),
        ("add", lambda: store.add(BASE, NAME, weights, method="qformer", metrics={"caption_exact_match": 0.5}, dataset="d")),
        ("promote(v1)", lambda: store.promote(BASE, NAME, "v0001")),
        ("rollback", lambda: store.rollback(BASE, NAME)),
        ("gc", lambda: store.gc()),
    ]


def exercise(root: Path, what: str) -> None:
    store = AdapterStore(root)
    for label, call in operations(store):
        checks.api(call, f"{what}: store.{label}")
    for args in (["adapters", "list"], ["adapters", "list", "--json"], ["adapters", "list", "--model", BASE, "--name", NAME],
                 ["adapters", "promote", "v0001", "--name", NAME, "--model", BASE],
                 ["adapters", "rollback", "--name", NAME, "--model", BASE]):
        checks.assert_cli_clean(checks.cli([*args, "--store", str(root)]), f"{what}: {' '.join(args)}")


def _file_cases() -> list:
    valid = {"version.json": {"format": 1, "name": NAME, "version": "v0001", "method": "lora", "base_model": BASE,
                              "metrics": {"caption_exact_match": 1.0}, "dataset": "x", "parent": None, "status": "promoted",
                              "reason": "r", "created": "2026-01-01T00:00:00+00:00", "files": {"a": 1}},
             "CURRENT": {"current": "v0001", "previous": [], "history": []},
             "MODEL.json": {"base_model": BASE}}
    cases = [pytest.param(name, case, id=f"{name}-{case.id}") for name, content in valid.items()
             for case in corpus.json_tamperings(content)]
    semantic = {
        "version.json": [{"metrics": {"caption_exact_match": 1e309}}, {"metrics": {"x": True}}, {"status": "weird"},
                         {"version": "v0002"}, {"base_model": "other"}, {"parent": "v" + "9" * 5000},
                         {"metrics": {"\ud800": 1.0}}, {"files": {"../../etc/passwd": 1}}, {"format": 10**300},
                         {"name": "\x00"}, {"created": "not a date"}],
        "CURRENT": [{"current": "v9999"}, {"current": "v" + "1" * 5000}, {"current": "v0001\n"}, {"previous": ["v0002"] * 100000},
                    {"previous": ["v" + "7" * 5000]}, {"history": {}}, {"current": None}, {"current": 1}],
        "MODEL.json": [{"base_model": "other"}, {"base_model": None}, {"base_model": "\ud800"}, {"base_model": "x" * 100000}],
    }
    for name, edits in semantic.items():
        for i, edit in enumerate(edits):
            cases.append(pytest.param(name, corpus.Case(f"edit{i}", edit), id=f"{name}-edit-{checks.short(edit, 40)}"))
    return cases


def _path(root: Path, name: str) -> Path:
    adapter = next(root.glob(f"*/{NAME}"))
    return {"version.json": adapter / "v0001" / "version.json", "CURRENT": adapter / "CURRENT",
            "MODEL.json": adapter.parent / "MODEL.json"}[name]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return fixtures.copy_store(tmp_path / "store")[0]


@pytest.mark.parametrize(("name", "case"), _file_cases())
def test_tampered_store_file(root: Path, name: str, case: corpus.Case) -> None:
    path = _path(root, name)
    if isinstance(case.value, dict):
        data = json.loads(path.read_text())
        data.update(case.value)
        path.write_text(json.dumps(data, ensure_ascii=True) if all(
            not isinstance(v, int) or abs(v) < 10**4000 for v in case.value.values()) else json.dumps(data))
    else:
        corpus.apply(case, path)
    exercise(root, f"{name} {case.id}")


@pytest.mark.parametrize("name", ["version.json", "CURRENT", "MODEL.json"])
@pytest.mark.parametrize("case", corpus.SPECIAL_FILE_TAMPERINGS, ids=lambda c: c.id)
def test_store_file_that_blocks_or_never_ends(root: Path, name: str, case: corpus.Case) -> None:
    corpus.apply(case, _path(root, name))
    for call in ("store.versions('demo', 'hostile')", "store.current('demo', 'hostile')", "store.names()",
                 "store.promote('demo', 'hostile', 'v0001')"):
        checks.api_isolated(f"from blip2plugins.store import AdapterStore\nstore = AdapterStore({str(root)!r})",
                            call, f"{name} as {case.id}: {call}", timeout=15)


def _layout_cases() -> list[pytest.param]:
    def version_file(root: Path) -> None:
        (next(root.glob(f"*/{NAME}")) / "v0002").write_text("not a folder")

    def huge_version(digits: int) -> Callable[[Path], None]:
        def make(root: Path) -> None:
            shutil.copytree(next(root.glob(f"*/{NAME}/v0001")), next(root.glob(f"*/{NAME}")) / ("v" + "9" * digits))
        return make

    def version_symlink(root: Path) -> None:
        os.symlink("/", next(root.glob(f"*/{NAME}")) / "v0002")

    def lock_dir(root: Path) -> None:
        (root / ".lock").unlink(missing_ok=True)
        (root / ".lock").mkdir()

    def tmp_file(root: Path) -> None:
        shutil.rmtree(root / ".tmp", ignore_errors=True)
        (root / ".tmp").write_text("x")

    def tmp_junk(root: Path) -> None:
        (root / ".tmp").mkdir(exist_ok=True)
        (root / ".tmp" / "deadbeef").mkdir()
        (root / ".tmp" / "x.lock").mkdir()

    def adapter_loop(root: Path) -> None:
        model = next(root.glob(f"*/{NAME}")).parent
        os.symlink(model / "loop", model / "loop")

    def model_json_missing(root: Path) -> None:
        next(root.glob("*/MODEL.json")).unlink()

    def version_files_missing(root: Path) -> None:
        for f in next(root.glob(f"*/{NAME}/v0001")).iterdir():
            if f.name != "version.json":
                f.unlink()

    def unicode_digit_version(root: Path) -> None:
        shutil.copytree(next(root.glob(f"*/{NAME}/v0001")), next(root.glob(f"*/{NAME}")) / "v\u0663\u0663\u0663\u0663")

    return [pytest.param(f, id=name) for name, f in {
        "version-is-a-file": version_file, "version-250-digits": huge_version(250), "version-254-digits": huge_version(254),
        "version-symlink-to-root": version_symlink, "lock-is-a-directory": lock_dir, "tmp-is-a-file": tmp_file,
        "tmp-junk": tmp_junk, "adapter-symlink-loop": adapter_loop, "model-json-missing": model_json_missing,
        "version-files-missing": version_files_missing, "arabic-indic-digit-version": unicode_digit_version}.items()]


@pytest.mark.parametrize("damage", _layout_cases())
def test_odd_store_layout(root: Path, damage: Callable[[Path], None]) -> None:
    damage(root)
    exercise(root, damage.__name__)


BAD_NAMES = ["", "A", "a" * 65, "../x", "a/b", "\x00", "\ud800", ".hidden", "con", 5, None]
BAD_BASES = ["", " ", "\x00", "\ud800", "x" * 100_000, 5, None, "../../etc"]
BAD_METRICS = [{"m": float("nan")}, {"m": 10**5000}, {"m": -(10**400)}, {"m": True}, {"": 1.0}, {5: 1.0},
               {"m": "1"}, [("m", 1.0)], None, {"\ud800": 1.0}]
BAD_VERSIONS = ["", "0", "v0", "-1", "v-1", "1" * 4400, "v" + "1" * 5000, "\u0663", "1.0", "nan", " 1 ", None, 1, 10**5000]


@pytest.mark.parametrize("name", BAD_NAMES, ids=checks.short)
def test_add_bad_names(tmp_path: Path, name: object) -> None:
    store = AdapterStore(tmp_path)
    checks.api(lambda: store.add(BASE, name, weights, method="qformer", metrics={}, dataset="d"), f"add(name={name!r})")  # type: ignore[arg-type]
    checks.api(lambda: store.versions(BASE, name), f"versions(name={name!r})")  # type: ignore[arg-type]


@pytest.mark.parametrize("base", BAD_BASES, ids=lambda b: checks.short(b, 30))
def test_add_bad_base_models(tmp_path: Path, base: object) -> None:
    store = AdapterStore(tmp_path)
    checks.api(lambda: store.add(base, NAME, weights, method="qformer", metrics={}, dataset="d"), "add(base_model=...)")  # type: ignore[arg-type]
    checks.api(lambda: store.names(base), "names(base_model=...)")  # type: ignore[arg-type]
    checks.api(lambda: store.current(base, NAME), "current(base_model=...)")  # type: ignore[arg-type]


@pytest.mark.parametrize("metrics", BAD_METRICS, ids=checks.short)
def test_add_bad_metrics(tmp_path: Path, metrics: object) -> None:
    store = AdapterStore(tmp_path)
    checks.api(lambda: store.add(BASE, NAME, weights, method="qformer", metrics=metrics, dataset="d"), "add(metrics=...)")  # type: ignore[arg-type]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=checks.short)
def test_bad_version_ids(root: Path, version: object) -> None:
    store = AdapterStore(root)
    checks.api(lambda: store.get(BASE, NAME, version), "get(version)")  # type: ignore[arg-type]
    checks.api(lambda: store.promote(BASE, NAME, version), "promote(version)")  # type: ignore[arg-type]
    checks.api(lambda: store.add(BASE, NAME, weights, method="qformer", metrics={}, dataset="d", parent=version),  # type: ignore[arg-type]
               "add(parent=version)")
    if isinstance(version, str):
        checks.api(lambda: store.resolve(BASE, f"{NAME}@{version}"), "resolve(name@version)")
        checks.assert_cli_clean(checks.cli(["adapters", "promote", version, "--name", NAME, "--model", BASE,
                                            "--store", str(root)]), f"adapters promote {checks.short(version, 30)}")


@pytest.mark.parametrize(("kwargs", "label"), [
    ({"margin": float("nan")}, "margin-nan"), ({"margin": 10**5000}, "margin-huge-int"), ({"baseline": float("nan")}, "baseline-nan"),
    ({"baseline": 10**5000}, "baseline-huge-int"), ({"metric": "\ud800"}, "metric-surrogate"), ({"metric": 5}, "metric-int"),
    ({"baseline_version": "\x00", "baseline": 0.5}, "baseline-version-nul"), ({"higher_is_better": "no"}, "higher-str")],
    ids=lambda x: x if isinstance(x, str) else "")
def test_judge_bad_arguments(root: Path, kwargs: dict, label: str) -> None:
    store = AdapterStore(root)
    candidate = store.add(BASE, NAME, weights, method="qformer", metrics={"caption_exact_match": 0.5}, dataset="d")
    checks.api(lambda: store.judge(candidate, **kwargs), f"judge({label})")


@pytest.mark.parametrize("kind", ["file", "dev-null", "nul", "surrogate", "dangling-symlink", "fifo"])
def test_bad_store_roots(tmp_path: Path, kind: str) -> None:
    paths = {"file": tmp_path / "file", "dev-null": Path("/dev/null"), "nul": tmp_path / "a\x00b",
             "surrogate": tmp_path / "\udcff", "dangling-symlink": tmp_path / "dangling", "fifo": tmp_path / "fifo"}
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    root = paths[kind]
    what = f"store at {kind}"
    proc = checks.api_isolated(f"from blip2plugins.store import AdapterStore\nstore = AdapterStore({str(root)!r})\n"
                               "w = lambda f: (f / 'q.safetensors').write_bytes(b'x')",
                               "(store.names(), store.add('demo', 'x', w, method='qformer', metrics={}, dataset='d'))",
                               what, timeout=15)
    assert "RETURNED" in proc.stdout or "BLIP2ERROR" in proc.stdout, proc.output
    checks.assert_cli_clean(checks.cli(["adapters", "list", "--store", str(root)]), f"adapters list ({what})")
