"""The README's path, run as written against the real Label Studio 1.23.2: start it, make the token, start
the backend, create the project, connect, pre-annotate on import, label, retrain, refresh predictions.
Also what Label Studio shows when the backend's key is wrong, and that "Retrieve predictions" on selected
tasks re-predicts those only.

Slow tier (see ``ls_real``): the commands come from the README's marked blocks (``ls_readme``), with
ports and folders given through the variables the README's first block reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

import ls_readme
import ls_real
from blip2plugins.demo import scenarios
from ls_payloads import CONFIG, png
from ls_processes import free_port, start, start_backend, stop, tail, wait_for

pytestmark = pytest.mark.slow
TINY = {"train": {"method": "lora", "steps": 3, "batch_size": 8, "lr": 1e-2, "warmup": 1, "log_every": 1},
        "eval_split": 0.25, "margin": -1.0}


def _until(what: str, check: Callable[[], Any], timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s\n" + "\n".join(tail(log) for log in logs))


def _versions_by_task(api: httpx.Client, project: int) -> dict[int, set[str]]:
    return {t["id"]: {p["model_version"] for p in t.get("predictions") or []} for t in ls_real.tasks(api, project)}


def test_the_readme_path_runs_on_the_real_label_studio(tmp_path) -> None:
    steps = ls_readme.blocks()
    assert list(steps) == ["settings", "label-studio", "backend", "project", "retrain"]
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "label-studio").symlink_to(ls_real.executable())
    (tools / "blip2").symlink_to(Path(sys.executable).parent / "blip2")
    images = tmp_path / "images"
    images.mkdir()
    scenes = scenarios.scenes(16, "ls-readme", keep=scenarios.has("square"))
    for i, scene in enumerate(scenes):
        (images / f"scene{i:02d}.png").write_bytes(png(scene))
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY))
    data_dir = tmp_path / "label-studio-data"
    shutil.copytree(ls_real._template(), data_dir)
    ls_port, backend_port = free_port(), free_port()
    env = {"PATH": f"{tools}:{os.environ['PATH']}", "LABEL_STUDIO_PORT": str(ls_port), "BACKEND_PORT": str(backend_port),
           "LS_USER": ls_real.USER, "LS_PASSWORD": ls_real.PASSWORD, "LS_LEGACY_TOKEN": ls_real.LEGACY_TOKEN,
           "IMAGES": str(images), "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "LOG_LEVEL": "WARNING", "MODEL_DIR": str(tmp_path / "model-dir"),
           "BLIP2_ADAPTER_STORE": str(tmp_path / "adapters"), "BLIP2_LS_TRAIN_CONFIG": str(recipe)}
    ls_log, backend_log = tmp_path / "label-studio.log", tmp_path / "backend.log"
    url = f"http://localhost:{ls_port}"
    label_studio = start(["bash", "-c", ls_readme.script(steps["settings"], steps["label-studio"])], ls_log, env)
    backend = None
    try:
        wait_for(f"{url}/health", label_studio, ls_log, 300)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Token {ls_real.LEGACY_TOKEN}"}, timeout=180)
        # The template's user already has a personal access token; revoke it, as a new user has none.
        api.post("/api/token/blacklist/", json={"refresh": (data_dir / "personal-token").read_text().strip()})
        backend = start(["bash", "-c", ls_readme.script(steps["settings"], steps["backend"])], backend_log, env)
        wait_for(f"http://127.0.0.1:{backend_port}/health", backend, backend_log, 180, ready=True)

        made = subprocess.run(["bash", "-c", ls_readme.script(steps["settings"], steps["project"], 'echo "PROJECT=$PROJECT"')],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr + tail(backend_log)
        project = int(made.stdout.strip().rsplit("PROJECT=", 1)[1])

        # Pre-annotated on import: every task has the base model's prediction, nobody pressed a button.
        by_task = _until("predictions on import", lambda: (v := _versions_by_task(api, project)) and
                         all(versions == {"demo"} for versions in v.values()) and v, 120, [backend_log])
        assert len(by_task) == len(scenes)

        tasks = {t["id"]: t["data"]["image"] for t in ls_real.tasks(api, project)}
        labeled = sorted(tasks)[:8]
        for task_id in labeled:  # the annotators' part: 8 submitted captions (--train-every 8)
            scene = scenes[int(tasks[task_id].rsplit("scene", 1)[1][:2])]
            ls_real.annotate(api, task_id, scenarios.team_caption(scene))

        def promoted() -> str | None:
            answer = httpx.get(f"http://127.0.0.1:{backend_port}/versions", params={"project": project}, timeout=30)
            current = answer.json()["projects"][0]["current"]
            return current if current != "demo" else None

        new = _until("a promoted version", promoted, 300, [backend_log])
        assert new == f"demo+project-{project}@v0001"
        unlabeled = [t for t in tasks if t not in labeled]
        refreshed = _until("unlabeled tasks re-predicted by the new version",
                           lambda: all(new in _versions_by_task(api, project)[t] for t in unlabeled), 180, [backend_log])
        assert refreshed
        by_task = _versions_by_task(api, project)
        assert all(by_task[t] == {"demo"} for t in labeled), "labeled tasks are left alone"

        shown = subprocess.run(["bash", "-c", ls_readme.script(steps["settings"], steps["retrain"])],
                               env={**os.environ, **env, "PROJECT": str(project)}, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 0 and shown.stdout.startswith(new) and "promoted" in shown.stdout, shown
    finally:
        if backend is not None:
            stop(backend)
        stop(label_studio)


def test_label_studio_shows_a_wrong_backend_key(tmp_path) -> None:
    with ls_real.running(tmp_path) as ls:
        api = ls.api()
        project = ls_real.create_project(api, "captions", CONFIG)
        port = free_port()
        log = tmp_path / "backend.log"

        def serve(key: str):
            process = start_backend(port, log, {"LABEL_STUDIO_API_KEY": key, "BLIP2_ADAPTER_STORE": str(tmp_path / "a")},
                                    "--model-dir", str(tmp_path / "model-dir"), "--label-studio-url", ls.url)
            wait_for(f"http://127.0.0.1:{port}/health", process, log, 180)
            return process

        process = serve("not-a-valid-key")
        try:  # connecting with a wrong key is refused, with the reason
            answer = api.post("/api/ml", json={"url": f"http://127.0.0.1:{port}", "project": project, "title": "blip2"})
            assert answer.status_code == 400 and "LABEL-STUDIO-API-KEY" in answer.text, answer.text
        finally:
            stop(process)
        process = serve(ls.personal_token)
        try:
            ml = ls_real.connect_backend(api, project, f"http://127.0.0.1:{port}")
            assert api.get(f"/api/ml/{ml}").json()["state"] == "CO"
        finally:
            stop(process)
        process = serve("")  # the key went missing: the next retrieval marks the backend in error
        try:
            ls_real.import_images(api, project, {"a.png": png(scenarios.scenes(1, "ls-key")[0])})
            ls_real.retrieve_predictions(api, project)
            shown = api.get(f"/api/ml/{ml}").json()
            assert shown["state"] == "ER" and shown["readable_state"] == "Error", shown
            assert "LABEL-STUDIO-API-KEY-is-not-set" in shown["error_message"], shown
            health = httpx.get(f"http://127.0.0.1:{port}/health").json()
            assert "LABEL_STUDIO_API_KEY is not set" in health["label_studio_error"]
        finally:
            stop(process)
