"""Retraining: a run on the accepted labels stores a version, the gate decides, and every backend sharing
the store serves the current version (also after a rollback); failed runs say why."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from blip2plugins.demo import scenarios, world
from blip2plugins.store import AdapterStore
from blip2plugins_label_studio import job
from blip2plugins_label_studio.settings import SettingsError, load_recipe

from ls_fake import backend_of, ready
from ls_payloads import CONFIG, annotation, annotation_event, png, predict_body, setup_body, task, upload_path
from ls_servers import LocalServer, reply

TINY = {"train": {"method": "lora", "steps": 3, "batch_size": 8, "lr": 1e-2, "warmup": 1, "log_every": 1},
        "eval_split": 0.25}


def recipe(tmp_path, margin: float) -> str:
    path = tmp_path / f"recipe{margin}.json"
    path.write_text(json.dumps({**TINY, "margin": margin}))
    return str(path)


def label_tasks(client, fake, n: int = 8) -> list[world.Scene]:
    """Upload ``n`` scenes with a square and record their captions in the team's words."""
    shown = scenarios.scenes(n, "ls-training", keep=scenarios.has("square"))
    for task_id, scene in enumerate(shown, 1):
        fake.files[upload_path(task_id)] = png(scene)
        answer = client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 100 + task_id, task_id,
                                                               scenarios.team_caption(scene)))
        assert answer.json()["recorded"] == 1
    return shown


def add_label(client, fake, task_id: int) -> None:
    scene = scenarios.scenes(1, f"ls-training-more:{task_id}", keep=scenarios.has("square"))[0]
    fake.files[upload_path(task_id)] = png(scene)
    answer = client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 100 + task_id, task_id,
                                                           scenarios.team_caption(scene)))
    assert answer.json()["recorded"] == 1


def model_version(client) -> str:
    return client.post("/setup", json=setup_body()).json()["model_version"]


def predicted_versions(client, n: int) -> set[str]:
    results = client.post("/predict", json=predict_body([task(i) for i in range(1, n + 1)])).json()["results"]
    return {r["model_version"] for r in results}


def test_a_promoted_run_is_served_by_every_backend_sharing_the_store(make_backend, tmp_path) -> None:
    first, fake = make_backend(train_config=recipe(tmp_path, margin=-1.0))
    second, fake_too = make_backend(train_config=recipe(tmp_path, margin=-1.0))
    fake_too.files = fake.files
    label_tasks(first, fake)
    backend = ready(first)
    ready(second)
    assert model_version(first) == model_version(second) == "demo"
    before = first.post("/predict", json=predict_body([task(1)])).json()["results"][0]

    outcome = job.run(backend.settings, "1", client=backend.client)
    assert outcome["status"] == "promoted" and outcome["version"] == "v0001" and outcome["records"] == 8, outcome
    for client in (first, second):
        assert model_version(client) == "demo+project-1@v0001"
        assert predicted_versions(client, 3) == {"demo+project-1@v0001"}
    after = first.post("/predict", json=predict_body([task(1)])).json()["results"][0]
    assert after["score"] != before["score"], "the adapter must be the one serving"

    versions = first.get("/versions", params={"project": "1"}).json()
    assert versions["versions"] == ["demo", "demo+project-1@v0001"]
    assert versions["projects"][0]["current"] == "demo+project-1@v0001"
    assert versions["projects"][0]["adapters"][0]["status"] == "promoted"


def test_a_refused_run_leaves_the_previous_version_serving(make_backend, tmp_path) -> None:
    client, fake = make_backend(train_config=recipe(tmp_path, margin=2.0))
    label_tasks(client, fake)
    backend = ready(client)
    outcome = job.run(backend.settings, "1", client=backend.client)
    assert outcome["status"] == "refused" and "margin 2" in outcome["reason"]
    assert model_version(client) == "demo" and predicted_versions(client, 2) == {"demo"}
    listed = client.get("/versions").json()["projects"][0]
    assert listed["adapters"][0]["status"] == "refused" and "margin" in listed["adapters"][0]["reason"]
    assert listed["versions"] == ["demo"]


@pytest.mark.parametrize("margin, status", [(-1.0, "promoted"), (2.0, "refused")])
def test_nothing_new_to_learn_makes_no_new_version(make_backend, tmp_path, margin, status) -> None:
    client, fake = make_backend(train_config=recipe(tmp_path, margin=margin))
    label_tasks(client, fake)
    backend = ready(client)
    first = job.run(backend.settings, "1", client=backend.client)
    assert first["status"] == status and first["version"] == "v0001"
    served = model_version(client)
    again = job.run(backend.settings, "1", client=backend.client)
    assert again["status"] == "skipped" and again["version"] == "v0001", again
    assert again["reason"] == f"nothing new since v0001 ({status}): it was trained on these same labels"
    assert model_version(client) == served
    assert [a.version for a in AdapterStore(backend.settings.adapter_store).versions("demo", "project-1")] == ["v0001"]
    add_label(client, fake, 9)
    assert job.run(backend.settings, "1", client=backend.client)["version"] == "v0002", "a new label trains again"


def test_a_rollback_in_the_store_is_followed_and_versions_survive_a_restart(make_backend, tmp_path) -> None:
    client, fake = make_backend(train_config=recipe(tmp_path, margin=-1.0))
    label_tasks(client, fake)
    backend = ready(client)
    job.run(backend.settings, "1", client=backend.client)
    add_label(client, fake, 9)
    job.run(backend.settings, "1", client=backend.client)
    assert model_version(client) == "demo+project-1@v0002"
    AdapterStore(backend.settings.adapter_store).rollback("demo", "project-1")
    assert model_version(client) == "demo+project-1@v0001"
    assert predicted_versions(client, 2) == {"demo+project-1@v0001"}
    client.__exit__(None, None, None)  # the process stops; a new one starts on the same folders
    restarted, fake_too = make_backend(train_config=recipe(tmp_path, margin=-1.0))
    fake_too.files = fake.files
    ready(restarted)
    assert model_version(restarted) == "demo+project-1@v0001"
    assert predicted_versions(restarted, 2) == {"demo+project-1@v0001"}
    listed = restarted.get("/versions", params={"project": "1"}).json()["projects"][0]
    assert [a["version"] for a in listed["adapters"]] == ["v0001", "v0002"]


def test_start_training_pulls_the_labeled_tasks_from_label_studio(make_backend, tmp_path) -> None:
    client, fake = make_backend(train_config=recipe(tmp_path, margin=-1.0))
    shown = scenarios.scenes(6, "ls-pull", keep=scenarios.has("square"))
    for task_id, scene in enumerate(shown, 1):
        fake.files[upload_path(task_id)] = png(scene)
        fake.export.append({**task(task_id), "annotations": [
            annotation_event("ANNOTATION_CREATED", 200 + task_id, task_id, scenarios.team_caption(scene))["annotation"]]})
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 999, 99, "a label deleted since"))
    backend = ready(client)
    outcome = job.run(backend.settings, "1", pull=True, label_config=CONFIG, client=backend.client)
    assert outcome["status"] == "promoted" and outcome["labels"] == 6 and outcome["records"] == 6


def test_a_run_without_labels_fails_with_the_reason(make_backend) -> None:
    client, _ = make_backend()
    backend = ready(client)
    outcome = job.run(backend.settings, "1", client=backend.client)
    assert outcome == {"status": "failed", "reason": "no accepted labels to train on", "labels": 0}


@pytest.mark.parametrize("body, content_type, reason", [
    (b"<!DOCTYPE html><html>Sign in</html>", "text/html", "answered 35 bytes of text/html, not usable JSON (line 1: "
                                                          "not valid JSON"),
    (b'{"detail": "Authentication credentials were not provided."}', "application/json",
     "the export of project 1 is a JSON object (keys: detail) saying 'Authentication credentials were not "
     "provided.', not a list of tasks"),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", "not usable JSON (nested more than 64 levels deep)"),
    (b"[" + b"1" * 5000 + b"]", "application/json", "not usable JSON (a number of 5,000 digits (at most 100))"),
], ids=["html", "object", "deep", "huge-number"])
def test_a_pull_that_fails_says_what_label_studio_answered(tmp_path, body, content_type, reason) -> None:
    from blip2plugins_label_studio.client import LabelStudioClient
    from blip2plugins_label_studio.settings import Settings

    with LocalServer({"/api/projects/1/export": reply(200, body, {"Content-Type": content_type})}) as label_studio:
        settings = Settings(model_dir=str(tmp_path / "model-dir"), label_studio_url=label_studio.url)
        outcome = job.run(settings, "1", pull=True, label_config=CONFIG, client=LabelStudioClient(label_studio.url, "k"))
    assert outcome["status"] == "failed" and outcome["reason"].startswith(
        "no accepted labels to train on (pulling the labeled tasks from Label Studio failed: ")
    assert reason in outcome["reason"] and "\n" not in outcome["reason"], outcome["reason"]


def test_exported_annotations_that_give_no_label_are_reported(tmp_path, caplog) -> None:
    from blip2plugins_label_studio.client import LabelStudioClient
    from blip2plugins_label_studio.settings import Settings

    export = [{**task(1), "annotations": [{**annotation(11, 1, "x"), "result": "oops"}, "oops", {"id": -1}]},
              {**task(2), "annotations": "oops"}, {**task(3), "id": "3"}, [], {**task(10**30)}]
    with LocalServer({"/api/projects/1/export": reply(200, json.dumps(export).encode())}) as label_studio:
        settings = Settings(model_dir=str(tmp_path / "model-dir"), label_studio_url=label_studio.url)
        with caplog.at_level(logging.WARNING, logger="blip2plugins_label_studio"):
            outcome = job.run(settings, "1", pull=True, label_config=CONFIG,
                              client=LabelStudioClient(label_studio.url, "k"))
    assert outcome["reason"] == "no accepted labels to train on"
    for problem in ["task 1 annotation 11: its result is str 'oops', not a list of regions",
                    "task 1: an annotation that is not an object with an id (a positive integer)",
                    "task 2: its annotations are str, not a list", "exported task #3: not an object with an id",
                    "exported task #4: not an object", "exported task #5: not an object"]:
        assert problem in caplog.text
    assert caplog.text.count("an annotation that is not an object") == 2


def test_a_crashed_run_is_recorded_failed_and_nothing_changes(make_backend) -> None:
    client, _ = make_backend()
    backend = backend_of(client)
    backend.trainer.command = [sys.executable, "-c", "import sys; sys.stdin.read(); "
                               "print('RuntimeError: out of memory', file=sys.stderr); sys.exit(3)"]
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}})
    assert backend.trainer.wait_idle(30)
    run = client.get("/versions").json()["projects"][0]["runs"][0]
    assert run["status"] == "failed" and "status 3" in run["reason"] and "out of memory" in run["reason"]
    assert run["trigger"] == "START_TRAINING"
    metrics = client.get("/metrics").text
    assert 'blip2_label_studio_training_runs_total{outcome="failed"} 1.0' in metrics


def test_recipes_from_json_and_from_python(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"train": {"method": "lora", "steps": 7, "lora_targets": ["q_proj"]}, "margin": 0.1}))
    config = load_recipe(str(path))
    assert (config.train.steps, config.train.lora_targets, config.margin) == (7, ("q_proj",), 0.1)
    assert load_recipe(None).train.method == "lora"
    for bad, reason in [({"train": {"stepz": 1}}, "unknown train key 'stepz'"), ({"marginn": 1}, "unknown key"),
                        ({"train": {"steps": 0}}, "steps must be >= 1")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(SettingsError, match=reason):
            load_recipe(str(path))
    with pytest.raises(SettingsError, match="not a FinetuneConfig"):
        load_recipe("blip2plugins_label_studio.settings:DEFAULT_RECIPE")
    with pytest.raises(SettingsError, match="cannot import"):
        load_recipe("no_such_module_xyz:CONFIG")


def test_projects_take_turns_on_the_host_in_arrival_order(tmp_path) -> None:
    """A request waiting for another project's adapter is not overtaken by later requests on the one
    served now, so a busy project cannot starve the others."""
    import threading
    import time
    from types import SimpleNamespace

    from blip2plugins_label_studio.serving import Serving
    from blip2plugins_label_studio.settings import Settings

    serving = Serving(Settings(model="demo", model_dir=str(tmp_path / "models"), adapter_store=str(tmp_path / "store")))
    swaps: list[str | None] = []
    serving.loaded.set_result(SimpleNamespace(use_adapter=swaps.append))
    adapters = {"A": None, "B": SimpleNamespace(path="/adapters/project-B/v0001", name="project-B", version="v0001")}
    serving.current = adapters.get  # type: ignore[method-assign]
    started: list[str] = []
    release = threading.Event()

    def request(name: str, project: str, hold: threading.Event | None = None) -> None:
        with serving.serving(project):
            started.append(name)
            if hold is not None:
                hold.wait(10)

    def waiting(count: int) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with serving._cond:
                if len(serving._waiting) == count:
                    return True
            time.sleep(0.01)
        return False

    threads = [threading.Thread(target=request, args=("A1", "A", release))]
    threads[0].start()
    while not started:
        time.sleep(0.01)
    threads.append(threading.Thread(target=request, args=("B", "B")))
    threads[1].start()
    assert waiting(1), "B waits for the swap while A1 runs"
    threads.append(threading.Thread(target=request, args=("A2", "A")))
    threads[2].start()
    assert waiting(2), "A2 queues behind B instead of joining A1"
    release.set()
    for thread in threads:
        thread.join(10)
    assert started == ["A1", "B", "A2"]
    assert swaps == ["/adapters/project-B/v0001", None]


def test_versions_lists_the_run_in_progress(make_backend) -> None:
    client, _ = make_backend()
    backend = backend_of(client)
    backend.trainer.command = [sys.executable, "-c", "import sys, time; sys.stdin.read(); time.sleep(3)"]
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}})
    deadline = time.monotonic() + 20
    while not (listed := client.get("/versions", params={"project": "1"}).json()["projects"][0])["training"]["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert listed["runs"][0]["status"] == "running" and listed["runs"][0]["trigger"] == "START_TRAINING"
    assert backend.trainer.wait_idle(30)
    listed = client.get("/versions", params={"project": "1"}).json()["projects"][0]
    assert [run["status"] for run in listed["runs"]] == ["failed"] and not listed["training"]["running"]
