"""The end-to-end labeling flow on a real Label Studio and a real backend, measured.

Create a captioning project, upload demo-world images, connect the backend, retrieve predictions,
submit the team's captions for the labeled part, start training, wait for the new model version,
retrieve predictions again, and score the held-out tasks. Used by the slow test and by
``benchmarks/label_studio_flow.py`` (which also runs the purple scenario).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

import ls_real
from blip2plugins.demo import scenarios, world
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


def scenario_data(name: str, seed: int = 0) -> tuple[list[tuple[world.Scene, str]], list[tuple[world.Scene, str]]]:
    """(labeled scenes with the team's captions, held-out scenes with the captions expected after training)."""
    if name == "vocabulary":
        held_team = scenarios.scenes(16, f"ls-held-team:{seed}", keep=scenarios.has("square"))
        held_plain = scenarios.scenes(8, f"ls-held-plain:{seed}", keep=lambda s: s.shape("square") is None)
        held = [(s, scenarios.team_caption(s)) for s in held_team] + [(s, world.caption(s)) for s in held_plain]
        return scenarios.vocabulary_labels(32, 32, seed=seed), held
    if name == "purple":
        palette = (*world.BASIC_COLOURS, "purple")
        held_purple = scenarios.scenes(16, f"ls-held-purple:{seed}", palette=palette, keep=scenarios.has_colour("purple"))
        held_plain = scenarios.scenes(8, f"ls-held-ordinary:{seed}")
        return scenarios.purple_labels(32, 32, seed=seed), [(s, world.caption(s)) for s in held_purple + held_plain]
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
        everything = labeled + held
        names = ls_real.import_images(api, project, {f"scene{i}.png": png(s) for i, (s, _) in enumerate(everything)})
        index = {task_id: int(name.removeprefix("scene").removesuffix(".png")) for task_id, name in names.items()}
        assert len(index) == len(everything), f"imported {len(index)} of {len(everything)} images"
        ml = ls_real.connect_backend(api, project, url)

        began = time.perf_counter()
        ls_real.retrieve_predictions(api, project)
        report["first_retrieve_s"] = round(time.perf_counter() - began, 2)
        base = _current(url, project)
        first = ls_real.predictions(api, project, base)
        report["base_version"] = base
        report["first_predicted"] = len(first)
        ordinary = [t for t, i in index.items() if _ordinary(everything[i][0])]
        report["first_exact_ordinary"] = _exact(first, index, ordinary, lambda i: world.caption(everything[i][0]))
        count = lambda i: world.NUMBERS[len(everything[i][0].shapes) - 1]  # noqa: E731
        report["first_exact_count"] = _exact(first, index, list(index), count, "count")
        say(f"{scenario}: {len(first)} tasks predicted by {base} in {report['first_retrieve_s']} s; exact captions on "
            f"ordinary scenes: {report['first_exact_ordinary']:.2f}")

        labeled_ids = [t for t, i in index.items() if i < len(labeled)]
        began = time.perf_counter()
        for task_id in labeled_ids:
            ls_real.annotate(api, task_id, everything[index[task_id]][1])
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

        held_ids = [t for t, i in index.items() if i >= len(labeled)]
        began = time.perf_counter()
        ls_real.retrieve_predictions(api, project, held_ids)
        report["second_retrieve_s"] = round(time.perf_counter() - began, 2)
        second = ls_real.predictions(api, project, new)
        report["second_predicted_held_out"] = sum(1 for t in held_ids if t in second)
        report["second_predicted_labeled"] = sum(1 for t in labeled_ids if t in second)
        special = [t for t in held_ids if not _ordinary(everything[index[t]][0]) or "tile" in everything[index[t]][1]]
        plain = [t for t in held_ids if t not in special]
        expected = lambda i: everything[i][1]  # noqa: E731
        report["held_out_exact_special"] = _exact(second, index, special, expected)
        report["held_out_exact_plain"] = _exact(second, index, plain, expected)
        report["ls_model_version"] = api.get(f"/api/ml/{ml}").json().get("model_version")
        report["ls_versions"] = ls_real.versions(api, ml)
        draft_task = held_ids[0]
        draft = " ".join(everything[index[draft_task]][1].split()[:2])
        report["interactive_draft"] = draft
        report["interactive"] = ls_real.interactive(api, ml, draft_task, draft)
        report["setup_refusal"] = _setup_refusal(api, url)
        say(f"{scenario}: held-out exact captions after training: special {report['held_out_exact_special']:.2f}, "
            f"plain {report['held_out_exact_plain']:.2f}")
        report["backend_log"] = log.read_text(errors="replace")
        report["secrets"] = [ls.personal_token, ls_real.LEGACY_TOKEN]
    return report


def _ordinary(scene: world.Scene) -> bool:
    return all(s.colour in world.BASIC_COLOURS for s in scene.shapes)


def _exact(found: dict[int, dict[str, Any]], index: dict[int, int], task_ids: list[int],
           expected: Callable[[int], str], from_name: str = "caption") -> float:
    if not task_ids:
        return float("nan")
    hits = sum(ls_real.text_of(found[t], from_name) == expected(index[t]) for t in task_ids if t in found)
    return hits / len(task_ids)


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
