"""``blip2 serve label-studio`` as a real server process: answers at once while the model loads, and with
several workers every process serves the adapter store's current version."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable

import httpx
import pytest

from blip2plugins.demo import scenarios
from blip2plugins.store import AdapterStore

from ls_payloads import SECRETS, annotation_event, png, setup_body
from ls_processes import free_port, start_backend, stop, wait_for


def test_health_and_setup_answer_in_time_while_the_model_loads(tmp_path) -> None:
    port, log = free_port(), tmp_path / "backend.log"
    env = {"BLIP2_ADAPTER_STORE": str(tmp_path / "store"), "LABEL_STUDIO_API_KEY": SECRETS[2]}
    process = start_backend(port, log, env, "--model-dir", str(tmp_path / "model-dir"))
    base = f"http://127.0.0.1:{port}"
    try:
        first = wait_for(f"{base}/health", process, log, 120)
        assert first.json()["ready"] is False, "the server must be up before the model is"
        slowest = {"/health": 0.0, "/setup": 0.0}
        ready = False
        while not ready:
            for route in slowest:
                began = time.perf_counter()
                answer = (httpx.get(f"{base}{route}", timeout=5) if route == "/health"
                          else httpx.post(f"{base}{route}", json=setup_body(), timeout=5))
                slowest[route] = max(slowest[route], time.perf_counter() - began)
                assert answer.status_code == 200, answer.text
                ready = ready or (route == "/health" and answer.json()["ready"])
            time.sleep(0.05)
        assert slowest["/health"] < 1.0 and slowest["/setup"] < 3.0, slowest
        assert httpx.post(f"{base}/setup", json=setup_body()).json() == {"model_version": "demo"}
    finally:
        stop(process)
    text = log.read_text()
    assert "Application startup complete" in text and SECRETS[2] not in text


def test_a_500_is_logged_with_its_traceback(tmp_path) -> None:
    """``blip2``'s one-line log formatter drops tracebacks: a 500's must still reach the log."""
    model_dir = tmp_path / "model-dir"
    model_dir.mkdir()
    (model_dir / "projects").write_text("a file where the label stores' folder belongs")
    port, log = free_port(), tmp_path / "backend.log"
    process = start_backend(port, log, {"LABEL_STUDIO_API_KEY": SECRETS[2]}, "--model-dir", str(model_dir),
                            "--model", "no-such-model")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/versions", process, log, 120)
        answer = httpx.post(f"{base}/webhook", json=annotation_event("ANNOTATION_CREATED", 1, 1, "a red circle"))
        assert answer.status_code == 500 and "log has the details" in answer.json()["error"]
        assert "Traceback" not in answer.text
    finally:
        stop(process)
    text = log.read_text()
    assert "blip2: ERROR: POST /webhook failed\nTraceback (most recent call last):" in text, text[-3000:]
    assert "NotADirectoryError" in text and SECRETS[2] not in text


def _project(tmp_path, seed: str, shape: str) -> tuple[Any, Callable[[int], None]]:
    """Settings of a backend with project 1 holding 8 of 9 accepted labels of scenes with ``shape``
    (a quick LoRA recipe that always promotes), and ``label(i)`` to accept scene i."""
    from blip2plugins_label_studio.labels import Entry, Label, LabelStore
    from blip2plugins_label_studio.settings import Settings

    store_dir, model_dir = tmp_path / "store", tmp_path / "model-dir"
    labels = LabelStore(model_dir / "projects" / "1")
    scenes = scenarios.scenes(9, seed, keep=scenarios.has(shape))

    def label(i: int) -> None:
        image = "data:image/png;base64," + base64.b64encode(png(scenes[i])).decode()
        labels.put(Label(i, 100 + i, (Entry("caption", image, (scenarios.team_caption(scenes[i]),)),)))

    for i in range(8):
        label(i)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"train": {"method": "lora", "steps": 2, "batch_size": 8, "warmup": 1},
                                  "eval_split": 0.25, "margin": -1}))
    return Settings(model_dir=str(model_dir), adapter_store=str(store_dir), train_config=str(recipe)), label


@pytest.mark.slow
def test_workers_follow_the_store_current_version(tmp_path) -> None:
    from blip2plugins_label_studio import job

    settings, label = _project(tmp_path, "ls-workers", "square")
    store_dir, model_dir = tmp_path / "store", tmp_path / "model-dir"
    port, log = free_port(), tmp_path / "backend.log"
    process = start_backend(port, log, {"BLIP2_ADAPTER_STORE": str(store_dir)}, "--model-dir", str(model_dir),
                            "--workers", "2")
    base = f"http://127.0.0.1:{port}"

    def versions_by_worker() -> dict[int, set[str]]:
        """The version each worker reports, asking until both have answered (a new connection each time)."""
        seen: dict[int, set[str]] = {}
        for _ in range(200):
            pid = httpx.get(f"{base}/health", timeout=10).json()["pid"]
            version = httpx.post(f"{base}/setup", json=setup_body(), timeout=10).json()["model_version"]
            seen.setdefault(pid, set()).add(version)
            if len(seen) == 2 and len(seen[pid]) == 1:
                break
        return seen

    try:
        wait_for(f"{base}/health", process, log, 180, ready=True)
        assert list(versions_by_worker().values()) == [{"demo"}, {"demo"}]
        assert job.run(settings, "1")["status"] == "promoted"
        assert list(versions_by_worker().values()) == [{"demo+project-1@v0001"}] * 2
        label(8)  # something new to learn
        assert job.run(settings, "1")["status"] == "promoted"
        AdapterStore(store_dir).rollback("demo", "project-1")
        assert list(versions_by_worker().values()) == [{"demo+project-1@v0001"}] * 2
        assert "blip2_label_studio_request_seconds_count" in httpx.get(f"{base}/metrics").text
    finally:
        stop(process)


def test_the_plugin_registers_blip2_serve_label_studio(tmp_path) -> None:
    from click.testing import CliRunner

    from blip2plugins.cli import build_cli
    from blip2plugins.plugins import serve_commands

    assert "label-studio" in serve_commands()
    runner = CliRunner()
    listed = runner.invoke(build_cli(), ["serve", "--help"])
    assert "label-studio" in listed.output
    helped = runner.invoke(build_cli(), ["serve", "label-studio", "--help"])
    assert helped.exit_code == 0 and "--workers" in helped.output and "LABEL_STUDIO_API_KEY" in helped.output
    missing = runner.invoke(build_cli(), ["serve", "label-studio", "--train-config", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "cannot read it" in missing.output
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(build_cli(), ["serve", "label-studio", "--train-config", str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and "not valid JSON" in bad.output
    half = runner.invoke(build_cli(), ["serve", "label-studio"], env={"BASIC_AUTH_USER": "team", "BASIC_AUTH_PASS": ""})
    assert half.exit_code == 2 and "BASIC_AUTH_PASS" in half.output


@pytest.mark.slow
def test_replicas_on_two_ports_sharing_one_store_follow_promotions_and_rollbacks(tmp_path) -> None:
    """Two backend processes, as behind a load balancer: each on its own port, one adapter store and
    one model dir (labels, training state) on shared storage. A promotion, and a rollback by hand,
    reach both on their next request."""
    from blip2plugins_label_studio import job

    settings, label = _project(tmp_path, "ls-replicas", "circle")
    store_dir, model_dir = tmp_path / "store", tmp_path / "model-dir"
    replicas = []
    for name in ("a", "b"):
        port, log = free_port(), tmp_path / f"replica-{name}.log"
        replicas.append((start_backend(port, log, {"BLIP2_ADAPTER_STORE": str(store_dir)}, "--model-dir",
                                       str(model_dir)), f"http://127.0.0.1:{port}", log))

    def versions() -> list[str]:
        return [httpx.post(f"{base}/setup", json=setup_body(), timeout=30).json()["model_version"]
                for _, base, _ in replicas]

    try:
        for process, base, log in replicas:
            wait_for(f"{base}/health", process, log, 180, ready=True)
        assert versions() == ["demo", "demo"]
        assert job.run(settings, "1")["status"] == "promoted"
        assert versions() == ["demo+project-1@v0001"] * 2
        label(8)  # something new to learn
        assert job.run(settings, "1")["status"] == "promoted"
        assert versions() == ["demo+project-1@v0002"] * 2
        AdapterStore(store_dir).rollback("demo", "project-1")
        assert versions() == ["demo+project-1@v0001"] * 2
    finally:
        for process, _, _ in replicas:
            stop(process)
