"""The end-to-end labeling flow on a real Label Studio and a real backend, measured.

Create a captioning project, upload images, connect the backend, retrieve predictions, submit the
team's captions for the labeled part, start training, wait for the new model version, retrieve
predictions again, and score the held-out tasks. The labeled tasks are demo-world pictures (world.py),
as a team's own images; the held-out tasks, scored before and after training, are PNGs drawn by the
independent painter (``tests/independent``), which the model never trains on. Used by the slow test and
by ``benchmarks/label_studio_flow.py`` (which also runs the purple scenario).
"""

from __future__ import annotations

import io
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

import ls_real
from blip2plugins.demo import scenarios, world
from independent import painter
from ls_payloads import NOTHING_TO_FILL, QUESTION_CONFIG, png
from ls_processes import free_port, start_backend, stop, wait_for

RECIPES = {"vocabulary": "blip2plugins.demo.scenarios:VOCABULARY_CONFIG",
           "purple": "blip2plugins.demo.scenarios:PURPLE_CONFIG"}


@contextmanager
def backend(folder: Path, ls: ls_real.LabelStudio, train_config: str | None) -> Iterator[tuple[str, Path]]:
    """``blip2 serve label-studio`` for ``ls``; its URL and log. Stopped (by process id) at the end."""
    port, log = free_port(), folder / "backend.log"
    env = {"LABEL_STUDIO_API_KEY": ls.personal_token, "BLIP2_ADAPTER_STORE": str(folder / "adapters")}
    recipe = ["--train-config", train_config] if train_config else []
    process = start_backend(port, log, env, "--model-dir", str(folder / "model-dir"), "--label-studio-url", ls.url,
                            "--train-threads", "2", *recipe)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process, log, 180, ready=True)
        yield url, log
    finally:
        stop(process)


def scenario_data(name: str, seed: int = 0) -> tuple[list[tuple[world.Scene, str]], list[tuple[painter.Scene, str]]]:
    """(labeled demo-world scenes with the team's captions, held-out painter scenes with the captions
    expected after training)."""
    if name == "vocabulary":
        team = painter.scenes(32, f"ls-held-team:{seed}", keep=lambda s: "square" in s.kinds())
        plain = painter.scenes(16, f"ls-held-plain:{seed}", keep=lambda s: "square" not in s.kinds())
        held = [(s, scenarios.in_team_words((x.kind, x.colour) for x in s.shapes)) for s in team]
        return scenarios.vocabulary_labels(32, 32, seed=seed), held + [(s, painter.caption(s)) for s in plain]
    if name == "purple":
        purple = painter.scenes(32, f"ls-held-purple:{seed}", palette=(*painter.BASIC, "purple"),
                                keep=lambda s: not _ordinary(s))
        plain = painter.scenes(16, f"ls-held-ordinary:{seed}")
        return scenarios.purple_labels(32, 32, seed=seed), [(s, painter.caption(s)) for s in purple + plain]
    raise ValueError(f"unknown scenario {name!r}")


def run(folder: Path, scenario: str = "vocabulary", *, say: Callable[[str], None] = print,
        train_timeout: float = 600.0) -> dict[str, Any]:
    """Run the flow; a report of what happened and what was measured."""
    labeled, held = scenario_data(scenario)
    report: dict[str, Any] = {"scenario": scenario, "labeled": len(labeled), "held_out": len(held)}
    recipe = RECIPES[scenario]
    with ls_real.running(folder) as ls, backend(folder, ls, recipe) as (url, log):
        api = ls.api()
        project = ls_real.create_project(api, f"captions ({scenario})", QUESTION_CONFIG)
        pictures = [png(s) for s, _ in labeled] + [_painted_png(s) for s, _ in held]
        names = ls_real.import_images(api, project, {f"scene{i}.png": data for i, data in enumerate(pictures)})
        index = {task_id: int(name.removeprefix("scene").removesuffix(".png")) for task_id, name in names.items()}
        assert len(index) == len(pictures), f"imported {len(index)} of {len(pictures)} images"
        labeled_ids = [t for t, i in index.items() if i < len(labeled)]
        held_scene = {t: held[i - len(labeled)] for t, i in index.items() if i >= len(labeled)}  # task: (scene, after)
        ml = ls_real.connect_backend(api, project, url)

        began = time.perf_counter()
        ls_real.retrieve_predictions(api, project)
        report["first_retrieve_s"] = round(time.perf_counter() - began, 2)
        base = _current(url, project)
        first = ls_real.predictions(api, project, base)
        report["base_version"] = base
        report["first_predicted"] = len(first)
        ordinary = {t: painter.caption(s) for t, (s, _) in held_scene.items() if _ordinary(s)}
        report["first_exact_ordinary"] = _exact(first, ordinary)
        counts = {t: world.NUMBERS[len(s.shapes) - 1] for t, (s, _) in held_scene.items()}
        report["first_exact_count"] = _exact(first, counts, "count")
        say(f"{scenario}: {len(first)} tasks predicted by {base} in {report['first_retrieve_s']} s; exact captions on "
            f"ordinary held-out (painter) scenes: {report['first_exact_ordinary']:.2f}")

        began = time.perf_counter()
        for task_id in labeled_ids:
            ls_real.annotate(api, task_id, labeled[index[task_id]][1])
        report["annotate_s"] = round(time.perf_counter() - began, 2)
        recorded = sum(1 for _ in (folder / "model-dir" / "projects" / str(project) / "labels").glob("annotation-*.json"))
        report["labels_recorded_by_webhook"] = recorded

        began = time.perf_counter()
        ls_real.start_training(api, ml)
        run_record = _wait_for_run(url, project, train_timeout)
        report["train_wall_s"] = round(time.perf_counter() - began, 1)
        report["run"] = {k: run_record.get(k) for k in ("status", "reason", "version", "metrics", "baseline", "labels",
                                                        "records", "seconds")}
        new = _current(url, project)
        report["new_version"] = new
        say(f"{scenario}: training {run_record.get('status')} in {report['train_wall_s']} s ({run_record.get('reason')}); "
            f"now serving {new}")

        held_ids = list(held_scene)
        began = time.perf_counter()
        ls_real.retrieve_predictions(api, project, held_ids)
        report["second_retrieve_s"] = round(time.perf_counter() - began, 2)
        second = ls_real.predictions(api, project, new)
        report["second_predicted_held_out"] = sum(1 for t in held_ids if t in second)
        report["second_predicted_labeled"] = sum(1 for t in labeled_ids if t in second)
        after = {t: text for t, (_, text) in held_scene.items()}
        special = {t: text for t, (s, text) in held_scene.items() if not _ordinary(s) or "tile" in text}
        report["held_out_exact_special"] = _exact(second, special)
        report["held_out_exact_plain"] = _exact(second, {t: text for t, text in after.items() if t not in special})
        captions = [ls_real.text_of(first[t], "caption") for t in held_ids if t in first]
        captions += [ls_real.text_of(second[t], "caption") for t in held_ids if t in second]
        report["held_out_captions"] = len(captions)
        report["malformed"] = [text for text in captions if not well_formed(text)]
        report["ls_model_version"] = api.get(f"/api/ml/{ml}").json().get("model_version")
        report["ls_versions"] = ls_real.versions(api, ml)
        draft_task = held_ids[0]
        draft = " ".join(after[draft_task].split()[:2])
        report["interactive_draft"] = draft
        report["interactive"] = ls_real.interactive(api, ml, draft_task, draft)
        report["setup_refusal"] = _setup_refusal(api, url)
        say(f"{scenario}: held-out exact captions after training: special {report['held_out_exact_special']:.2f}, "
            f"plain {report['held_out_exact_plain']:.2f}; malformed held-out captions {len(report['malformed'])} "
            f"of {len(captions)}")
        report["backend_log"] = log.read_text(errors="replace")
        report["secrets"] = [ls.personal_token, ls_real.LEGACY_TOKEN]
    return report


_PHRASE = re.compile(r"a (?:red|green|blue|yellow|purple) (circle|square|tile|triangle)")
_ORDER = {"circle": 0, "square": 1, "tile": 1, "triangle": 2}


def well_formed(text: str | None) -> bool:
    """Whether ``text`` is a caption of the world's grammar: 1 to 3 "a <colour> <shape>" joined by "and",
    each kind at most once, in the canonical order (circle, square or tile, triangle)."""
    phrases = [_PHRASE.fullmatch(p) for p in (text or "").split(" and ")]
    kinds = [_ORDER[m[1]] for m in phrases if m]
    return len(kinds) == len(phrases) and kinds == sorted(set(kinds))


def _painted_png(scene: painter.Scene) -> bytes:
    out = io.BytesIO()
    painter.paint(scene).save(out, format="PNG")
    return out.getvalue()


def _ordinary(scene: painter.Scene) -> bool:
    return all(s.colour in painter.BASIC for s in scene.shapes)


def _exact(found: dict[int, dict[str, Any]], expected: dict[int, str], from_name: str = "caption") -> float:
    """The fraction of the tasks of ``expected`` whose prediction's ``from_name`` text is the expected one."""
    if not expected:
        return float("nan")
    hits = sum(t in found and ls_real.text_of(found[t], from_name) == text for t, text in expected.items())
    return hits / len(expected)


def _current(url: str, project: int) -> str:
    return httpx.get(f"{url}/versions", params={"project": project}, timeout=30).json()["projects"][0]["current"]


def _wait_for_run(url: str, project: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = httpx.get(f"{url}/versions", params={"project": project}, timeout=30).json()["projects"][0]
        if listing["runs"] and not listing["training"]["queued"] and not listing["training"]["running"]:
            return listing["runs"][0]
        time.sleep(2)
    raise AssertionError(f"no training run finished within {timeout} s")


def _setup_refusal(api: httpx.Client, url: str) -> str:
    """What Label Studio says when the backend refuses a project with nothing to fill."""
    project = ls_real.create_project(api, "no text areas", NOTHING_TO_FILL)
    answer = api.post("/api/ml", json={"url": url, "project": project, "title": "blip2"})
    return f"HTTP {answer.status_code}: {answer.text[:600]}"
