"""/health, /setup and /predict against the bodies Label Studio sends, on the bundled demo model."""

from __future__ import annotations

import logging
import threading

import pytest

from blip2plugins.demo import world
from blip2plugins.host import Host

from ls_fake import backend_of, make_jwt, ready
from ls_payloads import (CONFIG, NOTHING_TO_FILL, QUESTION_CONFIG, SECRETS, png, predict_body, setup_body, task,
                         upload_path)

SCENES = [world.make_scene({"circle": "red"}), world.make_scene({"square": "blue", "triangle": "green"}),
          world.make_scene({"triangle": "yellow"}, background="dark"),
          world.make_scene({"circle": "green", "square": "yellow"}, background="gray")]


def uploaded(fake, scenes=SCENES, first_id: int = 1) -> list[dict]:
    """Tasks for ``scenes``, their images uploaded to the fake Label Studio."""
    tasks = []
    for task_id, scene in enumerate(scenes, first_id):
        fake.files[upload_path(task_id)] = png(scene)
        tasks.append(task(task_id))
    return tasks


def test_health_setup_and_webhook_answer_at_once_while_the_model_loads(make_backend, monkeypatch) -> None:
    release = threading.Event()
    real_load = Host.load.__func__

    def slow_load(cls, *args, **kwargs):
        release.wait(60)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Host, "load", classmethod(slow_load))
    client, _ = make_backend(predict_wait=0.2)
    try:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["ready"] is False and health.json()["state"] == "loading"
        setup = client.post("/setup", json=setup_body())
        assert setup.status_code == 200 and setup.json() == {"model_version": "demo"}
        waiting = client.post("/predict", json=predict_body([task(1)]))
        assert waiting.status_code == 503 and "still loading" in waiting.json()["error"]
    finally:
        release.set()
    ready(client)
    assert client.get("/health").json()["ready"] is True


def test_a_model_that_fails_to_load_is_reported_not_fatal(make_backend) -> None:
    client, _ = make_backend(model="no-such-model")
    backend = backend_of(client)
    with pytest.raises(Exception):
        backend.serving.loaded.result(timeout=60)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "DOWN" and "no-such-model" in health.json()["error"]
    assert client.post("/setup", json=setup_body()).status_code == 200
    refused = client.post("/predict", json=predict_body([task(1)]))
    assert refused.status_code == 503 and "failed to load" in refused.json()["error"]


def test_setup_refuses_a_config_with_nothing_to_fill(make_backend) -> None:
    client, _ = make_backend()
    answer = client.post("/setup", json=setup_body(NOTHING_TO_FILL))
    assert answer.status_code == 422
    assert "TextArea" in answer.json()["error"] and "Traceback" not in answer.text


def test_label_studio_sees_the_setup_refusal_reason_in_the_url(make_backend) -> None:
    """Label Studio shows only "422 Client Error: ... for url: URL": the redirect puts the reason in that URL."""
    client, _ = make_backend()
    agent = {"User-Agent": "heartex/1.23.2"}
    answer = client.post("/setup", json=setup_body(NOTHING_TO_FILL), headers=agent, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/setup/refused/this-BLIP-2-backend-fills-TextAreas-bound-to-an-Image")
    followed = client.post("/setup", json=setup_body(NOTHING_TO_FILL), headers=agent)
    assert followed.status_code == 422 and str(followed.url).endswith(answer.headers["location"])
    assert followed.json()["error"].startswith("setup refused: this BLIP 2 backend fills TextAreas bound to an Image")
    assert client.post("/setup", json=setup_body(), headers=agent).status_code == 200


def test_predict_captions_every_task_in_order_in_one_host_batch(make_backend) -> None:
    client, fake = make_backend()
    backend = ready(client)
    host = backend.serving.loaded.result()
    before = host.stats()["batches"]
    answer = client.post("/predict", json=predict_body(uploaded(fake)))
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert host.stats()["batches"] == before + 1
    assert [r["result"][0]["value"]["text"][0] for r in results] == [world.caption(s) for s in SCENES]
    for item in results:
        assert item["model_version"] == "demo" and 0.0 < item["score"] <= 1.0
        assert item["result"][0] | {"value": None} == {"from_name": "caption", "to_name": "image", "type": "textarea",
                                                        "value": None}
    assert all(auth == f"Token {SECRETS[2]}" for _, path, auth in fake.seen if path.startswith("/data/upload/"))


def test_an_image_shown_by_several_tasks_is_fetched_once(make_backend) -> None:
    client, fake = make_backend()
    ready(client)
    fake.files[upload_path(1)] = png(SCENES[0])
    tasks = [task(task_id, image=upload_path(1)) for task_id in (1, 2, 3, 4)]
    answer = client.post("/predict", json=predict_body(tasks))
    texts = [r["result"][0]["value"]["text"][0] for r in answer.json()["results"]]
    assert texts == [world.caption(SCENES[0])] * 4
    assert [path for _, path, _ in fake.seen].count(upload_path(1)) == 1


def test_fast_preprocess_reaches_the_host_and_captions_stay_right(make_backend) -> None:
    client, fake = make_backend(fast_preprocess=True)
    assert ready(client).serving.loaded.result().fast_preprocess
    answer = client.post("/predict", json=predict_body(uploaded(fake)))
    assert [r["result"][0]["value"]["text"][0] for r in answer.json()["results"]] == [world.caption(s) for s in SCENES]


def test_a_task_whose_image_fails_gets_no_prediction_and_the_others_do(make_backend, caplog) -> None:
    client, fake = make_backend()
    ready(client)
    tasks = uploaded(fake, SCENES[:2])
    fake.files[upload_path(7)] = b"<html>not an image</html>"
    tasks += [task(7), task(8), task(9, "http://169.254.169.254/latest/meta-data/x.png"), task(10, "/etc/passwd")]
    tasks.insert(1, task(11, "relative/path.png"))
    with caplog.at_level(logging.WARNING, logger="blip2plugins_label_studio"):
        results = client.post("/predict", json=predict_body(tasks)).json()["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"][0]["value"]["text"] == [world.caption(SCENES[0])]
    assert results[2]["result"][0]["value"]["text"] == [world.caption(SCENES[1])]
    assert [r for i, r in enumerate(results) if i not in (0, 2)] == [[]] * 5
    log = caplog.text
    assert "task 7" in log and "not an image" in log
    assert "task 8" in log and "HTTP 404" in log
    assert "task 9" in log and "refused" in log and "allow-listed" in log
    assert "task 10" in log and "task 11" in log and "unsupported image reference" in log
    assert not any("169.254" in path for _, path, _ in fake.seen), "a refused host must not be contacted"


def test_allow_listed_hosts_are_fetched_without_credentials(make_backend) -> None:
    client, fake = make_backend(allow_hosts=("images.example.org",))
    ready(client)
    fake.files[upload_path(1)] = png(SCENES[0])
    results = client.post("/predict", json=predict_body([task(1, "https://images.example.org/a.png")])).json()["results"]
    assert results[0]["result"][0]["value"]["text"] == [world.caption(SCENES[0])]
    assert [auth for _, path, auth in fake.seen if path == "/a.png"] == [None]


def test_a_personal_access_token_is_refreshed_and_sent_as_bearer(make_backend) -> None:
    pat = make_jwt("refresh", lifetime=3600)
    client, fake = make_backend(key=pat)
    ready(client)
    results = client.post("/predict", json=predict_body(uploaded(fake))).json()["results"]
    assert all(r["result"] for r in results)
    refreshes = [entry for entry in fake.seen if entry[1] == "/api/token/refresh/"]
    assert len(refreshes) == 1, "the access token is cached until it expires"
    assert all(auth.startswith("Bearer ") for _, path, auth in fake.seen if path.startswith("/data/upload/"))


def test_a_textarea_with_a_question_gets_the_answer(make_backend) -> None:
    client, fake = make_backend()
    ready(client)
    results = client.post("/predict", json=predict_body(uploaded(fake, SCENES[:2]), schema=QUESTION_CONFIG)).json()
    regions = [{r["from_name"]: r["value"]["text"][0] for r in item["result"]} for item in results["results"]]
    assert regions == [{"caption": world.caption(s), "count": world.NUMBERS[len(s.shapes) - 1]} for s in SCENES[:2]]


def test_interactive_preannotation_continues_the_annotators_text(make_backend) -> None:
    client, fake = make_backend()
    ready(client)
    context = {"result": [{"from_name": "caption", "to_name": "image", "type": "textarea",
                           "value": {"text": ["a blue square and"]}}]}
    tasks = uploaded(fake, SCENES[1:2])
    free = client.post("/predict", json=predict_body(tasks)).json()["results"][0]
    guided = client.post("/predict", json=predict_body(tasks, context=context)).json()["results"][0]
    text = guided["result"][0]["value"]["text"][0]
    assert text.startswith("a blue square and ") and len(text) > len("a blue square and ")
    assert guided["model_version"] == free["model_version"] == "demo"


def test_predict_uses_the_config_of_the_last_setup_when_the_body_has_none(make_backend) -> None:
    client, fake = make_backend()
    ready(client)
    body = predict_body(uploaded(fake, SCENES[:1]))
    del body["label_config"]
    assert client.post("/predict", json=body).status_code == 422
    client.post("/setup", json=setup_body(CONFIG))
    assert client.post("/predict", json=body).json()["results"][0]["result"]


def test_metrics_in_prometheus_format(make_backend) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client, fake = make_backend()
    ready(client)
    client.post("/predict", json=predict_body(uploaded(fake) + [task(99)]))
    client.get("/health")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples}
    prefix = "blip2_label_studio"
    assert samples[(f"{prefix}_request_seconds_count", (("route", "/predict"), ("status", "2xx")))] == 1
    assert samples[(f"{prefix}_request_seconds_count", (("route", "/health"), ("status", "2xx")))] == 1
    assert samples[(f"{prefix}_predict_batch_tasks_sum", ())] == len(SCENES) + 1
    assert samples[(f"{prefix}_predictions_total", (("outcome", "failed"),))] == 1
    assert samples[(f"{prefix}_predictions_total", (("outcome", "predicted"),))] == len(SCENES)
    assert samples[(f"{prefix}_model_version_info", (("model_version", "demo"), ("project", "1")))] == 1
    assert samples[(f"{prefix}_training_queue_length", ())] == 0
    assert samples[(f"{prefix}_model_ready", ())] == 1
    assert any(name == f"{prefix}_training_seconds_count" for name, _ in samples)
