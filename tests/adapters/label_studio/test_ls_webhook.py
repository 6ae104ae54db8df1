"""/webhook: labels recorded and removed on disk, training queued, bad bodies refused with a reason."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import pytest

from blip2plugins_label_studio.labels import LabelStore
from blip2plugins_label_studio.training import Trainer

from ls_fake import backend_of
from ls_payloads import (PROJECT, SECRETS, annotation, annotation_event, deleted_event, predict_body, project,
                         setup_body, start_training, task)


def stored(client) -> dict[int, list[str]]:
    """annotation id -> its stored caption texts."""
    store = LabelStore(backend_of(client).settings.projects_dir / str(PROJECT))
    return {label.annotation: [t for e in label.entries for t in e.texts] for label in store.labels()}


def test_created_updated_cancelled_and_deleted_annotations(make_backend) -> None:
    client, _ = make_backend()
    assert client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 11, 1, "a red tile")).json()["recorded"] == 1
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 12, 2, "a green circle"))
    assert stored(client) == {11: ["a red tile"], 12: ["a green circle"]}
    client.post("/webhook", json=annotation_event("ANNOTATION_UPDATED", 11, 1, "a red  tile and a blue triangle",
                                                  updated_at="2026-11-30T06:00:00.000000Z"))
    stale = client.post("/webhook", json=annotation_event("ANNOTATION_UPDATED", 11, 1, "an old text",
                                                          updated_at="2026-11-30T05:30:00.000000Z"))
    assert stale.status_code == 200 and stale.json()["recorded"] == 0
    assert stored(client)[11] == ["a red tile and a blue triangle"]
    cancelled = client.post("/webhook", json=annotation_event("ANNOTATION_UPDATED", 12, 2, "x", cancelled=True,
                                                              updated_at="2026-11-30T07:00:00.000000Z"))
    assert cancelled.json()["removed"] == 1 and 12 not in stored(client)
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 13, 3, "a yellow square"))
    assert client.post("/webhook", json=deleted_event(11, 99)).json()["removed"] == 1
    assert stored(client) == {13: ["a yellow square"]}
    gone = client.post("/webhook", json={"action": "TASKS_DELETED", "tasks": [{"id": 3}], "project": project()})
    assert gone.json()["removed"] == 1 and stored(client) == {}


def test_bulk_created_annotations_are_matched_to_their_tasks(make_backend) -> None:
    client, _ = make_backend()
    body = {"action": "ANNOTATIONS_CREATED", "annotation": [annotation(21, 5, "a red circle"), annotation(22, 6, None)],
            "task": [task(5), task(6)], "project": project()}
    assert client.post("/webhook", json=body).json()["recorded"] == 1
    assert stored(client) == {21: ["a red circle"]}


def test_unknown_actions_are_acknowledged_and_ignored(make_backend) -> None:
    client, _ = make_backend()
    answer = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": project()})
    assert answer.status_code == 200 and answer.json()["status"] == "ignored" and stored(client) == {}


@pytest.mark.parametrize("body, status, reason", [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"\xff\xfe", 400, "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested more than 64 levels deep"),
    (json.dumps({"project": {"id": 1}}).encode(), 422, "'action' is missing"),
    (json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1}}).encode(), 422, "annotation"),
    (json.dumps({"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}, "task": {"id": 1},
                 "project": {"id": 1}}).encode(), 422, "annotation.0.id"),
], ids=["not-json", "empty", "array", "not-utf8", "deep", "no-action", "no-annotation", "bad-annotation-id"])
def test_malformed_webhooks_get_a_4xx_with_the_reason(make_backend, body, status, reason) -> None:
    client, _ = make_backend()
    answer = client.post("/webhook", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status and reason in answer.json()["error"], answer.text
    assert "Traceback" not in answer.text


def test_a_label_without_an_image_is_refused_and_the_others_kept(make_backend) -> None:
    client, _ = make_backend()
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 31, 1, "a red circle"))
    body = annotation_event("ANNOTATION_CREATED", 32, 2, "a blue square")
    body["task"]["data"] = {"text": "no image here"}
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 422 and "'image'" in answer.json()["error"]
    assert stored(client) == {31: ["a red circle"]}


def test_bodies_over_the_limit_are_refused_without_reading_them(make_backend) -> None:
    client, _ = make_backend(max_body_bytes=4096)
    answer = client.post("/predict", content=b"{" + b" " * 10_000 + b"}", headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "limit" in answer.json()["error"]

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(10):
            yield b" " * 1000

    assert client.post("/webhook", content=chunks()).status_code == 413


def test_unknown_routes_and_methods(make_backend) -> None:
    client, _ = make_backend()
    assert client.get("/nope").status_code == 404 and "/predict" in client.get("/nope").json()["error"]
    assert client.get("/predict").status_code == 405


def test_secrets_in_payloads_never_reach_the_log(make_backend, caplog, monkeypatch) -> None:
    monkeypatch.setattr(Trainer, "_run", lambda self, request, *run: {"status": "failed", "reason": "not run here"})
    client, fake = make_backend()
    with caplog.at_level(logging.DEBUG):
        client.post("/setup", json=setup_body())
        client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 41, 1, "a red circle"))
        client.post("/webhook", json={**annotation_event("ANNOTATION_CREATED", 42, 2, "x"), "task": {"id": "bad"}})
        client.post("/webhook", json=start_training())
        backend_of(client).serving.loaded.result(timeout=60)
        leaky = f"http://user:{SECRETS[1]}@evil.test/x.png?sig={SECRETS[0]}"
        client.post("/predict", json=predict_body([task(1), task(2, leaky)]))
        backend_of(client).trainer.wait_idle(120)
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "project 1" in text  # the log does talk about the requests
    for secret in SECRETS:
        assert secret not in text


def test_basic_auth_guards_every_route(make_backend, monkeypatch) -> None:
    monkeypatch.setenv("BASIC_AUTH_USER", "team")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    client, _ = make_backend()
    assert client.get("/health").status_code == 401
    assert client.post("/webhook", json=start_training()).status_code == 401
    wrong = "Basic " + base64.b64encode(b"team:nope").decode()
    assert client.get("/health", headers={"Authorization": wrong}).status_code == 401
    right = "Basic " + base64.b64encode(b"team:s3cret").decode()
    assert client.get("/health", headers={"Authorization": right}).status_code == 200


def test_start_training_and_every_n_labels_queue_runs_that_coalesce(make_backend, monkeypatch) -> None:
    started, release, done = threading.Event(), threading.Event(), []

    def fake_run(self, request, *run):
        started.set()
        release.wait(30)
        done.append((request.project, request.pull, request.reason))
        return {"status": "refused", "reason": "fake"}

    monkeypatch.setattr(Trainer, "_run", fake_run)
    client, _ = make_backend(train_every=2)
    assert client.post("/webhook", json=start_training()).json()["training"] == "queued"
    assert started.wait(10)
    # during the run: the first request queues one more run, the next ones join it
    assert client.post("/webhook", json=start_training()).json()["training"] == "queued"
    client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 51, 1, "a red circle"))
    every = client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 52, 2, "a blue square"))
    assert every.json()["training"] == "coalesced"
    assert backend_of(client).trainer.queue_length() == 2
    release.set()
    assert backend_of(client).trainer.wait_idle(10)
    assert done == [("1", True, "START_TRAINING"), ("1", True, "START_TRAINING")]
    versions = client.get("/versions").json()
    assert versions["projects"][0]["training"] == {"queued": False, "running": False}


def test_webhooks_answer_fast(make_backend) -> None:
    client, _ = make_backend()
    worst = 0.0
    for i in range(20):
        began = time.perf_counter()
        client.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 100 + i, 1 + i, f"a red circle {i}"))
        worst = max(worst, time.perf_counter() - began)
    assert worst < 1.0 and len(stored(client)) == 20
