"""The real Label Studio server for end-to-end runs: its cached virtual environment and migrated data
folder, a running instance on loopback, and an API client that drives it like a person would.

The environment comes from ``scripts/setup.sh --label-studio-only`` (cached under
``~/.cache/blip2plugins``). The first start migrates a fresh database (about 30 s); that folder, with
its user and personal access token, is kept as a template, and each run starts from a copy (about 4 s).
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from ls_processes import free_port, start, stop, tail, wait_for

REPO = Path(__file__).resolve().parents[3]
VERSION = "1.23.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blip2plugins"
VENV = Path(os.environ.get("BLIP2_LS_VENV") or CACHE / "label-studio-venv")
TEMPLATE = CACHE / f"label-studio-data-{VERSION}"
USER, PASSWORD = "ci@blip2plugins.test", "blip2plugins-ci-password"
LEGACY_TOKEN = "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # 40 characters, as Label Studio's own


def executable() -> Path:
    """``label-studio`` in its cached environment, installed first if missing or stale (setup.sh knows which)."""
    subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--label-studio-only"], check=True)
    return VENV / "bin" / "label-studio"


def environment(data_dir: Path) -> dict[str, str]:
    return {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false", "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false", "LOG_LEVEL": "WARNING", "DJANGO_DB": "sqlite",
    }


@dataclass
class LabelStudio:
    """A running Label Studio: its URL, a personal access token for the backend, and an API client."""

    url: str
    personal_token: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {LEGACY_TOKEN}"}, timeout=180)


def _launch(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = start([str(executable()), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)],
                    log, environment(data_dir))
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", process, log, 300)
    return process, url


def _template() -> Path:
    """The migrated data folder with the user and a personal access token, made once (under a lock)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".label-studio-data-{VERSION}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (TEMPLATE / "personal-token").exists():
            return TEMPLATE
        building = TEMPLATE.with_name(TEMPLATE.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        process, url = _launch(building, building.parent / f"{building.name}.log")
        try:
            answer = httpx.post(f"{url}/api/token/", headers={"Authorization": f"Token {LEGACY_TOKEN}"}, timeout=60)
            answer.raise_for_status()
            token = answer.json()["token"]
        finally:
            stop(process)
        (building / "personal-token").write_text(token)
        shutil.rmtree(TEMPLATE, ignore_errors=True)
        building.rename(TEMPLATE)
        return TEMPLATE


@contextmanager
def running(folder: Path) -> Iterator[LabelStudio]:
    """Label Studio on a copy of the template folder under ``folder``; stopped (by process id) at the end."""
    template = _template()
    data_dir = folder / "label-studio-data"
    began = time.perf_counter()
    shutil.copytree(template, data_dir)
    log = folder / "label-studio.log"
    process, url = _launch(data_dir, log)
    print(f"label studio up in {time.perf_counter() - began:.1f} s from the migrated template")
    try:
        yield LabelStudio(url, (data_dir / "personal-token").read_text().strip(), process, log)
    finally:
        stop(process)


# -- driving it through the API ---------------------------------------------------------------------------

def create_project(api: httpx.Client, title: str, label_config: str) -> int:
    answer = api.post("/api/projects", json={"title": title, "label_config": label_config})
    _check(answer)
    return answer.json()["id"]


#: Most files Label Studio takes in one upload (its ``DATA_UPLOAD_MAX_NUMBER_FILES``).
MAX_FILES_PER_IMPORT = 100


def import_images(api: httpx.Client, project: int, images: dict[str, bytes]) -> dict[int, str]:
    """Upload PNGs (one multipart field each, or Label Studio keeps only one; at most
    :data:`MAX_FILES_PER_IMPORT` a request); task id -> file name."""
    files = [(f"file{i}", (name, io.BytesIO(data), "image/png")) for i, (name, data) in enumerate(images.items())]
    for first in range(0, len(files), MAX_FILES_PER_IMPORT):
        _check(api.post(f"/api/projects/{project}/import", files=files[first : first + MAX_FILES_PER_IMPORT]))
    return {t["id"]: t["data"]["image"].rsplit("-", 1)[-1] for t in tasks(api, project)}


def tasks(api: httpx.Client, project: int) -> list[dict[str, Any]]:
    answer = api.get("/api/tasks", params={"project": project, "page_size": 1000, "fields": "all"})
    _check(answer)
    body = answer.json()
    return body["tasks"] if isinstance(body, dict) else body


def connect_backend(api: httpx.Client, project: int, url: str) -> int:
    answer = api.post("/api/ml", json={"url": url, "project": project, "title": "blip2", "is_interactive": True})
    _check(answer)
    return answer.json()["id"]


def retrieve_predictions(api: httpx.Client, project: int, task_ids: list[int] | None = None) -> None:
    """The Data Manager's "Retrieve predictions" on all tasks, or on ``task_ids`` (Label Studio reads
    ``selectedItems``: with ``selected_items`` it would take every task)."""
    selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
    _check(api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                    json={"selectedItems": selected}))


def annotate(api: httpx.Client, task_id: int, text: str, from_name: str = "caption") -> None:
    result = [{"from_name": from_name, "to_name": "image", "type": "textarea", "value": {"text": [text]}}]
    _check(api.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, "was_cancelled": False}))


def start_training(api: httpx.Client, ml_backend: int) -> None:
    _check(api.post(f"/api/ml/{ml_backend}/train", json={}))


def interactive(api: httpx.Client, ml_backend: int, task_id: int, text: str) -> dict[str, Any]:
    """Interactive pre-annotation with the annotator's draft ``text``: what Label Studio hands the editor."""
    context = {"result": [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]}
    answer = api.post(f"/api/ml/{ml_backend}/interactive-annotating", json={"task": task_id, "context": context})
    _check(answer)
    return answer.json()


def versions(api: httpx.Client, ml_backend: int) -> list[str]:
    """The model versions Label Studio lists for the backend (it asks the backend's /versions)."""
    answer = api.get(f"/api/ml/{ml_backend}/versions")
    _check(answer)
    return answer.json()["versions"]


def predictions(api: httpx.Client, project: int, model_version: str) -> dict[int, dict[str, Any]]:
    """Task id -> its prediction by ``model_version``."""
    found = {}
    for task in tasks(api, project):
        for prediction in task.get("predictions") or []:
            if prediction.get("model_version") == model_version:
                found[task["id"]] = prediction
    return found


def text_of(prediction: dict[str, Any], from_name: str = "caption") -> str | None:
    """The text a prediction puts in the TextArea ``from_name``."""
    return next((r["value"]["text"][0] for r in prediction["result"] if r["from_name"] == from_name), None)


def _check(answer: httpx.Response) -> None:
    if answer.is_error:
        raise AssertionError(f"{answer.request.method} {answer.request.url.path}: HTTP {answer.status_code}: "
                             f"{answer.text[:500]}")


__all__ = ["LabelStudio", "running", "tail"]
