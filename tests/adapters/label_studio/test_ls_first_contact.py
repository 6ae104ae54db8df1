"""What a new user meets first: a wrong key shown at /setup, a renewal that recovers, loopback spellings of
Label Studio's host, the download cache, bounded per-project state, and hostile image paths."""

from __future__ import annotations

import base64
import json
import math
import time

import anyio
import httpx2
import pytest

from blip2plugins.demo import world
from blip2plugins_label_studio import client as client_module
from blip2plugins_label_studio.app import MAX_PROJECTS
from blip2plugins_label_studio.client import LabelStudioClient
from blip2plugins_label_studio.metrics import MAX_PROJECT_LABELS, Metrics

from ls_fake import backend_of, make_jwt, ready
from ls_payloads import CONFIG, PROJECT, SECRETS, png, predict_body, setup_body, task, upload_path

PNG = png(world.make_scene({"circle": "red"}))


def texts(answer) -> list[str | None]:
    assert answer.status_code == 200, answer.text
    return [r["result"][0]["value"]["text"][0] if r else None for r in answer.json()["results"]]


def test_a_wrong_key_is_refused_at_setup_where_label_studio_shows_it(make_backend) -> None:
    client, fake = make_backend()
    fake.key = "another-key"  # Label Studio no longer accepts the backend's key
    answer = client.post("/setup", json=setup_body())
    assert answer.status_code == 422 and "HTTP 401 to GET /api/projects/1" in answer.json()["error"]
    assert "LABEL_STUDIO_API_KEY" in answer.json()["error"]
    as_label_studio = client.post("/setup", json=setup_body(), headers={"User-Agent": "heartex/1.23.2"},
                                  follow_redirects=False)
    assert as_label_studio.status_code == 303
    assert "/setup/refused/the-backend-cannot-use-Label-Studio-s-API" in as_label_studio.headers["location"]
    assert "HTTP 401" in client.get("/health").json()["label_studio_error"]
    fake.key = SECRETS[2]
    assert client.post("/setup", json=setup_body()).status_code == 200
    assert "label_studio_error" not in client.get("/health").json()


def test_a_missing_key_is_refused_at_setup(make_backend) -> None:
    client, _ = make_backend()
    backend_of(client).client._key = None
    answer = client.post("/setup", json=setup_body())
    assert answer.status_code == 422 and "LABEL_STUDIO_API_KEY is not set" in answer.json()["error"]


@pytest.mark.parametrize("bad", [
    httpx2.Response(200, content=b"<html>Sign in</html>", headers={"Content-Type": "text/html"}),
    httpx2.Response(200, json=["access"]),
    httpx2.Response(200, json={"access": 5}),
    httpx2.Response(500, content=b"oops"),
], ids=["html", "list", "not-a-string", "500"])
def test_predictions_recover_once_the_token_renewal_works_again(make_backend, monkeypatch, bad) -> None:
    monkeypatch.setattr(client_module, "_RETRY_AFTER", 0.5)
    client, fake = make_backend(key=make_jwt("refresh", 3600))
    fake.files[upload_path(1)] = PNG
    answers = iter([bad])
    good = fake.handler
    fake_handler = lambda request: (next(answers, None) or good(request)) if request.url.path == "/api/token/refresh/" \
        else good(request)  # noqa: E731
    backend_of(client).client._http._transport = httpx2.MockTransport(fake_handler)
    ready(client)
    assert texts(client.post("/predict", json=predict_body([task(1)]))) == [None]
    time.sleep(0.6)
    assert texts(client.post("/predict", json=predict_body([task(1)])))[0], "renewed as soon as it works again"


def test_an_access_token_without_a_usable_expiry_is_used(make_backend) -> None:
    client, fake = make_backend(key=make_jwt("refresh", 3600))
    fake.files[upload_path(1)] = PNG
    part = base64.urlsafe_b64encode(json.dumps({"exp": math.nan}).encode()).decode().rstrip("=")
    original = fake.handler

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/api/token/refresh/":
            token = f"eyJhbGciOiJIUzI1NiJ9.{part}.c2ln"
            fake.issued.add(token)
            return httpx2.Response(200, json={"access": token})
        return original(request)

    backend_of(client).client._http._transport = httpx2.MockTransport(handler)
    ready(client)
    for _ in range(2):
        assert texts(client.post("/predict", json=predict_body([task(1)])))[0]


def test_a_nul_in_an_image_path_fails_its_own_task(make_backend) -> None:
    client, fake = make_backend()
    fake.files[upload_path(1)] = PNG
    ready(client)
    tasks = [task(1), task(2, "/data/upload/1/\u0000.png"), task(3, "http://label-studio.test:8080/\u0000x.png")]
    assert [bool(t) for t in texts(client.post("/predict", json=predict_body(tasks)))] == [True, False, False]


@pytest.mark.parametrize("configured, task_url", [
    ("http://localhost:8080", "http://127.0.0.1:8080/data/upload/1/a.png"),
    ("http://127.0.0.1:8080", "http://localhost:8080/data/upload/1/a.png"),
    ("http://localhost:8080", "http://[::1]:8080/data/upload/1/a.png"),
])
def test_loopback_spellings_of_label_studio_are_label_studio(configured, task_url) -> None:
    assert LabelStudioClient(configured, SECRETS[2]).resolve(task_url) == (task_url, True)


@pytest.mark.parametrize("task_url", ["http://127.0.0.1:8081/a.png", "https://127.0.0.1:8080/a.png",
                                      "http://10.0.0.1:8080/a.png"])
def test_other_ports_schemes_and_hosts_are_not(task_url) -> None:
    with pytest.raises(Exception, match="neither Label Studio's host"):
        LabelStudioClient("http://localhost:8080", SECRETS[2]).resolve(task_url)


def test_images_are_revalidated_with_their_etag() -> None:
    seen: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("if-none-match"))
        if request.headers.get("if-none-match") == '"v1"':
            return httpx2.Response(304)
        return httpx2.Response(200, content=PNG, headers={"ETag": '"v1"'})

    client = LabelStudioClient("http://label-studio.test:8080", SECRETS[2], transport=httpx2.MockTransport(handler))
    assert anyio.run(client.image_bytes, "/data/local-files/?d=a.png") == PNG
    assert anyio.run(client.image_bytes, "/data/local-files/?d=a.png") == PNG
    assert seen == [None, '"v1"']


def test_per_project_state_is_bounded(make_backend) -> None:
    client, _ = make_backend()
    backend = backend_of(client)
    for project in range(1, MAX_PROJECTS + 20):
        backend.configs[str(project)] = CONFIG
    assert len(backend.configs) == MAX_PROJECTS and str(PROJECT) not in backend.configs
    metrics = Metrics()
    for project in range(MAX_PROJECT_LABELS + 50):
        metrics.serving(str(project), "demo")
    series = {s.labels["project"] for m in metrics.version.collect() for s in m.samples}
    assert len(series) == MAX_PROJECT_LABELS + 1 and "other" in series


def test_uploaded_images_are_fetched_once_and_others_each_time() -> None:
    paths: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        paths.append(request.url.path)
        return httpx2.Response(200, content=PNG)

    client = LabelStudioClient("http://label-studio.test:8080", SECRETS[2], transport=httpx2.MockTransport(handler))
    for _ in range(3):
        for ref in ("/data/upload/1/0a1b2c3d-a.png", "/data/local-files/?d=a.png", "/tasks/1/resolve/?fileuri=eA"):
            assert anyio.run(client.image_bytes, ref) == PNG
    assert paths.count("/data/upload/1/0a1b2c3d-a.png") == 1
    assert paths.count("/data/local-files/") == 3 and paths.count("/tasks/1/resolve/") == 3
