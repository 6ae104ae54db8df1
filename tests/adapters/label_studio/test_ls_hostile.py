"""Hostile inputs against the backend served over HTTP on 127.0.0.1: slow and redirecting image hosts, a
Label Studio answering nonsense, and bodies that are valid JSON of the wrong kind. Each ends in a 4xx
or a task without a prediction (the reason logged once), never a 500 or a stalled backend."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import httpx
import pytest

from blip2plugins.demo import world

from ls_fake import make_jwt
from ls_payloads import annotation_event, png, predict_body, setup_body, task, upload_path
from ls_servers import LocalServer, drip, raw, redirect, reply

PNG = png(world.make_scene({"circle": "red"}))
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
CAPTION = world.caption(world.make_scene({"circle": "red"}))


@pytest.fixture(autouse=True)
def _no_label_studio_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)


def texts(answer: httpx.Response) -> list[str | None]:
    """Each task's first predicted text, or None for a task without a prediction."""
    assert answer.status_code == 200, answer.text
    return [item["result"][0]["value"]["text"][0] if item else None for item in answer.json()["results"]]


def test_an_image_download_ends_at_the_download_deadline(live_backend, caplog) -> None:
    with LocalServer({"*": drip(0.2)}) as slow:
        backend = live_backend(allow_hosts=(slow.host,), download_timeout=1.5).ready()
        began = time.perf_counter()
        with caplog.at_level(logging.INFO, logger="blip2plugins_label_studio"):
            answer = backend.http.post("/predict", json=predict_body([task(1, f"{slow.url}/a.png"), task(2, DATA_URI)]),
                                       timeout=20)
        took = time.perf_counter() - began
    assert texts(answer) == [None, CAPTION]
    assert 1.4 < took < 6, took
    assert "timed out (the download took longer than 1.5 s)" in caplog.text


def test_control_routes_answer_while_predictions_wait_on_a_slow_host(live_backend) -> None:
    """45 /predict calls wait on a host that drips; webhooks, /setup, /versions, /health and a /predict of a
    data: image answer as if the backend were idle."""
    with LocalServer({"*": drip(0.5)}) as slow:
        backend = live_backend(allow_hosts=(slow.host,), download_timeout=60).ready()
        waiting = [threading.Thread(target=backend.http.post, args=("/predict",),
                                    kwargs={"json": predict_body([task(i, f"{slow.url}/{i}.png")]), "timeout": 90},
                                    daemon=True) for i in range(1, 46)]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 30
        while slow.dripping < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # every call has arrived
        assert slow.dripping >= 8
        for i, call in enumerate([
            lambda: backend.http.post("/webhook", json=annotation_event("ANNOTATION_CREATED", 7, 7, "a red circle")),
            lambda: backend.http.post("/setup", json=setup_body()),
            lambda: backend.http.get("/versions"),
            lambda: backend.http.get("/health"),
            lambda: backend.http.post("/webhook", json=annotation_event("ANNOTATION_UPDATED", 7, 7, "a red disc",
                                                                        updated_at="2026-12-01T00:00:00Z")),
        ]):
            began = time.perf_counter()
            answer = call()
            assert answer.status_code == 200 and time.perf_counter() - began < 2.0, (i, answer.text)
        began = time.perf_counter()
        assert texts(backend.http.post("/predict", json=predict_body([task(99, DATA_URI)]))) == [CAPTION]
        assert time.perf_counter() - began < 10
        assert all(thread.is_alive() for thread in waiting)
    for thread in waiting:  # the slow host is gone: they end
        thread.join(30)


@pytest.mark.parametrize("body, content_type, said", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html", "of text/html, not usable JSON"),
    (b'["access"]', "application/json", "answered a JSON list without an 'access' token"),
    (b'{"access": 5}', "application/json", "answered a JSON object (keys: access) without"),
], ids=["html", "list", "not-a-string"])
def test_a_token_renewal_answering_nonsense_leaves_the_tasks_unpredicted(live_backend, caplog, body, content_type,
                                                                         said) -> None:
    with LocalServer({"/api/token/refresh/": reply(200, body, {"Content-Type": content_type})}) as label_studio:
        backend = live_backend(key=make_jwt("refresh", 3600), label_studio_url=label_studio.url).ready()
        with caplog.at_level(logging.INFO, logger="blip2plugins_label_studio"):
            answer = backend.http.post("/predict", json=predict_body([task(i) for i in (1, 2, 3)]))
        assert texts(answer) == [None, None, None]
        assert label_studio.paths().count("/api/token/refresh/") == 1, "one batch asks once"
    assert caplog.text.count("cannot renew the access token") == 1 and said in caplog.text
    assert "task 1, 2, 3:" in caplog.text


def test_a_bad_url_fails_its_own_task_only(live_backend, caplog) -> None:
    backend = live_backend().ready()
    bad = ["http://127.0.0.1:29080:29082/x.png", "http://[::1/x.png", "http://127.0.0.1:99999/x.png",
           "s3://bucket/x.png"]
    tasks = [task(1, DATA_URI)] + [task(i, ref) for i, ref in enumerate(bad, 2)] + [task(9, DATA_URI)]
    with caplog.at_level(logging.WARNING, logger="blip2plugins_label_studio"):
        assert texts(backend.http.post("/predict", json=predict_body(tasks))) == [CAPTION, None, None, None, None, CAPTION]
    assert caplog.text.count("invalid URL") == 3


def test_redirects_are_followed_only_to_allowed_hosts(live_backend, caplog) -> None:
    with LocalServer({"*": reply(200, PNG, {"Content-Type": "image/png"})}) as other, \
            LocalServer({upload_path(1): redirect(f"{other.url}/a.png"),
                         "/tasks/2/resolve/": redirect(f"{other.url}/b.png", 303),
                         upload_path(3): redirect("/data/upload/1/loop.png"),
                         "/data/upload/1/loop.png": redirect(upload_path(3)),
                         upload_path(4): redirect("file:///etc/passwd")}) as label_studio:
        tasks = [task(1), task(2, "s3://bucket/b.png"), task(3), task(4)]
        refused = live_backend(label_studio_url=label_studio.url).ready()
        with caplog.at_level(logging.WARNING, logger="blip2plugins_label_studio"):
            assert texts(refused.http.post("/predict", json=predict_body(tasks))) == [None] * 4
        assert other.seen == [], "a host that is not allow-listed must not be contacted"
        assert f"redirected to {other.url}/a.png: refused" in caplog.text
        assert "more than 5 redirects" in caplog.text and "redirected to file:///etc/passwd" in caplog.text

        allowed = live_backend(label_studio_url=label_studio.url, allow_hosts=(other.host,)).ready()
        assert texts(allowed.http.post("/predict", json=predict_body(tasks[:2]))) == [CAPTION, CAPTION]
        assert sorted((path, auth) for _, path, auth in other.seen) == [("/a.png", None), ("/b.png", None)], \
            "Label Studio's credentials never leave its host"


def test_malformed_answers_of_an_image_host_fail_their_task_only(live_backend, caplog) -> None:
    answers = {"/location": b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n",
               "/length": b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nx",
               "/garbage": b"\x00\xff garbage\r\n\r\n",
               "/gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nxxxxx"}
    with LocalServer({path: raw(data) for path, data in answers.items()}) as host:
        backend = live_backend(allow_hosts=(host.host,)).ready()
        tasks = [task(i, f"{host.url}{path}") for i, path in enumerate(answers, 1)] + [task(9, DATA_URI)]
        with caplog.at_level(logging.WARNING, logger="blip2plugins_label_studio"):
            assert texts(backend.http.post("/predict", json=predict_body(tasks))) == [None] * 4 + [CAPTION]
    assert "redirected to (unparsable URL): invalid URL" in caplog.text
    assert caplog.text.count("a malformed answer") == 3


def test_a_big_batch_logs_a_summary_not_a_line_per_task(live_backend, caplog) -> None:
    backend = live_backend().ready()
    tasks = [task(i, f"relative/{i}.png") for i in range(1, 2001)]
    with caplog.at_level(logging.INFO, logger="blip2plugins_label_studio"):
        answer = backend.http.post("/predict", json=predict_body(tasks))
    assert answer.status_code == 200 and answer.json()["results"] == [[]] * 2000
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("blip2plugins_label_studio.predict")]
    assert len(lines) == 7, lines
    assert lines[0] == "project 1: predicted 0 of 2000 task(s) (demo)"
    assert lines[-1] == "project 1: 1995 more problem(s) for 1995 other reason(s) not shown"


HUGE = "1" + "0" * 5000


def encoded(text: str) -> bytes:
    return text.encode()


@pytest.mark.parametrize("route, body, status, reason", [
    ("/webhook", encoded('{"action": "ANNOTATION_CREATED", "annotation": {"id": %s}}' % HUGE), 400, "5,001 digits"),
    ("/predict", encoded('{"tasks": [], "project": %s}' % HUGE), 400, "5,001 digits"),
    ("/setup", encoded('{"schema": "x", "project": 1, "n": -%s}' % HUGE), 400, "digits"),
    ("/webhook", encoded('{"action": "\\ud800"}'), 400, "lone surrogate"),
    ("/webhook", encoded('{"action": "START_TRAINING", "project": {"id": %d}}' % 10**300), 400, "digits"),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": 10**30}}).encode(), 422, "project.id"),
    ("/webhook", json.dumps(annotation_event("ANNOTATION_CREATED", 10**30, 1, "x")).encode(), 422, "annotation.0.id"),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": -5}}).encode(), 422, "project.id"),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": "3"}}).encode(), 422, "project.id"),
    ("/webhook", json.dumps({"action": "START_TRAINING", "project": {"id": True}}).encode(), 422, "project.id"),
    ("/setup", json.dumps({**setup_body(), "project": "\u0663"}).encode(), 422, "positive project id"),
    ("/setup", json.dumps({**setup_body(), "project": -5}).encode(), 422, "positive project id"),
    ("/setup", json.dumps({**setup_body(), "project": "0.123"}).encode(), 422, "positive project id"),
    ("/predict", json.dumps({**predict_body([task(1)]), "project": "-5.1795353650"}).encode(), 422, "positive project"),
    ("/predict", json.dumps({**predict_body([task(1)]), "project": "\u0663.1795353650"}).encode(), 422, "positive"),
    ("/predict", json.dumps(predict_body([task(10**30)])).encode(), 422, "tasks.0.id"),
], ids=["huge-int-webhook", "huge-int-predict", "huge-int-setup", "surrogate-action", "id-1e300", "project-1e30",
        "annotation-1e30", "project-negative", "project-string", "project-bool", "arabic-indic-setup",
        "negative-setup", "zero-setup", "negative-predict", "arabic-indic-predict", "task-1e30"])
def test_hostile_numbers_and_strings_get_a_4xx(live_backend, route, body, status, reason) -> None:
    backend = live_backend()
    answer = backend.http.post(route, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status and reason in answer.json()["error"], answer.text
    assert not (backend.backend.settings.projects_dir).exists() or not any(
        backend.backend.settings.projects_dir.iterdir()), "nothing is written for a refused body"


@pytest.mark.parametrize("query", ["\u0663", "-5", "0", "1" * 30, "x"])
def test_versions_refuses_a_project_that_is_no_id(live_backend, query) -> None:
    answer = live_backend().http.get("/versions", params={"project": query})
    assert answer.status_code == 422 and "positive project id" in answer.json()["error"], answer.text


@pytest.mark.parametrize("result", [5, True, "oops", {"a": 1}, [5, "x", None]])
def test_a_context_result_that_is_no_list_of_regions_is_ignored(live_backend, result) -> None:
    backend = live_backend().ready()
    answer = backend.http.post("/predict", json=predict_body([task(1, DATA_URI)], context={"result": result}))
    assert texts(answer) == [CAPTION]
