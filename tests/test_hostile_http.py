"""Hostile requests to every route of the Label Studio backend, started for real on loopback once (with a
fake Label Studio beside it): never a 5xx, always an answer within a bounded time, no traceback in its log."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

if importlib.util.find_spec("blip2plugins_label_studio") is None:
    pytest.skip("the Label Studio adapter is not installed", allow_module_level=True)

import httpx

from hostile import corpus
from hostile.fakels import FakeLabelStudio

sys.path.insert(0, str(Path(__file__).parent / "adapters" / "label_studio"))
from ls_processes import free_port, start, stop, tail  # noqa: E402

pytestmark = pytest.mark.timeout(120)

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image"/>
  <TextArea name="count" toName="image" question="how many shapes?"/>
</View>"""
PROJECT = "1.1795353650"
GOOD = "/data/upload/1/good.png"
FAST, SLOW = 10.0, 45.0


class Backend:
    def __init__(self, url: str, log: Path, process: Any, fake: FakeLabelStudio) -> None:
        self.url, self.log, self.process, self.fake = url, log, process, fake
        self.client = httpx.Client(base_url=url, timeout=60)

    def send(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None, limit: float = FAST,
             headers: dict[str, str] | None = None) -> httpx.Response:
        content = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        began = time.monotonic()
        try:
            answer = self.client.request(method, path, content=content, headers={
                "Content-Type": "application/json", **(headers or {})})
        except httpx.HTTPError as exc:
            raise AssertionError(f"{method} {path[:80]}: no answer ({type(exc).__name__}: {exc}); backend log:\n"
                                 f"{tail(self.log, 30)}") from exc
        took = time.monotonic() - began
        assert answer.status_code < 500, (f"{method} {path[:80]}: HTTP {answer.status_code} {answer.text[:300]}\n"
                                          f"backend log:\n{tail(self.log, 30)}")
        assert took < limit, f"{method} {path[:80]}: answered after {took:.1f} s (limit {limit} s)"
        return answer


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    folder = tmp_path_factory.mktemp("ls-backend")
    with FakeLabelStudio() as fake:
        fake.files[GOOD] = corpus.scene_png(5)
        for case in corpus.image_bytes():
            fake.files[f"/data/upload/1/{case.id}.png"] = case.value
        recipe = folder / "recipe.json"
        recipe.write_text(json.dumps({"train": {"method": "lora", "steps": 1, "batch_size": 4, "warmup": 0}, "eval_split": 0.25}))
        port, log = free_port(), folder / "backend.log"
        env = {"BLIP2_PLUGINS": "label-studio", "LABEL_STUDIO_API_KEY": fake.key,
               "BLIP2_ADAPTER_STORE": str(folder / "store"), "OMP_NUM_THREADS": "1",
               "BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": ""}
        process = start([sys.executable, "-m", "blip2plugins.cli", "serve", "label-studio", "--port", str(port),
                         "--model-dir", str(folder / "model-dir"), "--label-studio-url", fake.url, "--max-body-mb", "2",
                         "--predict-wait", "60", "--train-config", str(recipe), "--log-level", "info"], log, env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                assert process.poll() is None, f"the backend exited:\n{tail(log)}"
                assert time.monotonic() < deadline, f"the backend did not get ready:\n{tail(log)}"
                try:
                    if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.3)
            yield Backend(url, log, process, fake)
        finally:
            stop(process)


def task(task_id: Any, image: Any) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": image}}


def predict_body(*tasks: Any, **extra: Any) -> dict[str, Any]:
    return {"tasks": list(tasks), "project": PROJECT, "label_config": CONFIG, **extra}


# -- raw bodies on every POST route ----------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("case", corpus.raw_bodies(), ids=lambda c: c.id)
def test_raw_bodies(backend: Backend, route: str, case: corpus.Case) -> None:
    answer = backend.send("POST", route, raw=case.value)
    assert 400 <= answer.status_code < 500 or answer.status_code == 200, answer.text


@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
def test_oversized_body(backend: Backend, route: str) -> None:
    backend.send("POST", route, raw=b"[" + b"1," * (1_100_000) + b"1]")


@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("content_type", ["text/html", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""])
def test_content_types(backend: Backend, route: str, content_type: str) -> None:
    backend.send("POST", route, raw=b'{"project": 1}', headers={"Content-Type": content_type})


# -- /setup ----------------------------------------------------------------------------------------------------

SETUP_PROJECTS = {"int-10**300": "1" + "0" * 300, "digits-4400": '"' + "1" * 4400 + '"', "int-4301-digits": "1" * 4301,
                  "negative": "-1", "float": "1.5", "true": "true", "null": "null", "empty": '""', "letters": '"abc"',
                  "list": "[1]", "surrogate": '"\\ud800"', "arabic-digit": '"\\u0663"', "huge-float": "1e999"}


@pytest.mark.parametrize("name", list(SETUP_PROJECTS))
def test_setup_projects(backend: Backend, name: str) -> None:
    raw = ('{"project": ' + SETUP_PROJECTS[name] + ', "schema": ' + json.dumps(CONFIG) + "}").encode()
    backend.send("POST", "/setup", raw=raw)


SCHEMAS = {
    "not-xml": "hello", "empty": "", "html": "<html><body>", "deep-nesting": "<View>" + "<View>" * 50000 + "</View>" * 50001,
    "billion-laughs": '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                      '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
                      '<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;"><!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
                      '<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;"><!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
                      ']><View><TextArea name="&lol8;" toName="image"/></View>',
    "xxe": '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY e SYSTEM "file:///etc/passwd">]><View><Image name="image" value="$image"/>'
           '<TextArea name="&e;" toName="image"/></View>',
    "textarea-without-image": '<View><TextArea name="c" toName="nothing"/></View>',
    "duplicate-names": '<View><Image name="image" value="$image"/><TextArea name="c" toName="image"/><TextArea name="c" toName="image"/></View>',
    "huge-question": '<View><Image name="image" value="$image"/><TextArea name="c" toName="image" question="' + "q" * 200000 + '"/></View>',
    "nul-in-attr": '<View><Image name="image" value="$image"/><TextArea name="c&#0;" toName="image"/></View>',
    "image-value-no-dollar": '<View><Image name="image" value="image"/><TextArea name="c" toName="image"/></View>',
    "many-textareas": '<View><Image name="image" value="$image"/>' + "".join(
        f'<TextArea name="t{i}" toName="image"/>' for i in range(3000)) + "</View>",
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_setup_schemas(backend: Backend, name: str) -> None:
    backend.send("POST", "/setup", body={"project": PROJECT, "schema": SCHEMAS[name]})
    backend.send("POST", "/setup", body={"project": PROJECT, "schema": SCHEMAS[name]}, headers={"User-Agent": "heartex/1.23"})


@pytest.mark.parametrize("body", [{"project": PROJECT}, {"schema": CONFIG}, {"project": PROJECT, "schema": 5},
                                  {"project": PROJECT, "schema": None}, {"project": {"id": 1}, "schema": CONFIG}],
                         ids=["no-schema", "no-project", "schema-int", "schema-null", "project-object"])
def test_setup_fields(backend: Backend, body: dict) -> None:
    backend.send("POST", "/setup", body=body)


@pytest.mark.parametrize("reason", ["x" * 10000, "%00", "%ff%fe", "..%2F..%2Fetc", "%F0%9F%98%80" * 100, "a%0Ab"])
def test_setup_refused_reasons(backend: Backend, reason: str) -> None:
    backend.send("GET", f"/setup/refused/{reason}")


# -- /predict --------------------------------------------------------------------------------------------------

IMAGE_REFS: dict[str, Any] = {
    **{f"upload-{c.id}": f"/data/upload/1/{c.id}.png" for c in corpus.image_bytes()},
    "upload-missing": "/data/upload/1/missing.png", "redirect-loop": "/redirect-loop/x.png", "length-lie": "/length-lie/x.png",
    "bad-port-99999": "http://127.0.0.1:99999/x.png", "bad-port-0": "http://127.0.0.1:0/x.png",
    "bad-port-letters": "http://127.0.0.1:abc/x.png", "ipv6-unclosed": "http://[::1/x.png", "other-host": "http://example.invalid/x.png",
    "s3": "s3://bucket/key.png", "gs-no-key": "gs://", "azure-huge": "azure-blob://" + "a" * 10000,
    "data-bad-base64": "data:image/png;base64,!!!", "data-bomb": "data:image/png;base64," + base64.b64encode(corpus.png_header(100000, 100000)).decode(),
    "data-empty": "data:,", "data-not-base64-header": "data:image/png," + "%89PNG", "empty": "", "null": None, "int-10**300": 10**300,
    "list": ["/data/upload/1/good.png"], "dict": {"url": GOOD}, "relative": "x.png", "long-path": "/" + "a" * 10000,
    "nul": "/data/upload/1/\x00.png", "surrogate": "/data/\ud800.png", "file-url": "file:///etc/passwd",
    "path-traversal": "/data/upload/../../../../etc/passwd", "url-with-credentials": "http://user:pw@127.0.0.1:1/x.png",
}


@pytest.mark.parametrize("name", list(IMAGE_REFS))
def test_predict_image_refs(backend: Backend, name: str) -> None:
    """One hostile task beside a good one: the good one is still predicted (a bad task fails alone)."""
    body = predict_body(task(1, GOOD), task(2, IMAGE_REFS[name]))
    try:
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
    except ValueError:  # an int too long for json.dumps
        raw = json.dumps(predict_body(task(1, GOOD), task(2, "@"))).replace('"@"', "1" + "0" * 300).encode()
    answer = backend.send("POST", "/predict", raw=raw, limit=SLOW)
    if answer.status_code == 200:
        results = answer.json()["results"]
        assert len(results) == 2, results
        assert results[0] and results[0]["result"], f"the good task got no prediction beside {name}: {answer.text[:300]}"


PREDICT_BODIES: dict[str, str] = {
    "tasks-not-list": '{"tasks": {"id": 1}, "project": "1"}', "tasks-ints": '{"tasks": [1, 2], "project": "1"}',
    "task-data-string": '{"tasks": [{"id": 1, "data": "x"}], "project": "1"}', "no-project": '{"tasks": []}',
    "project-10**300": '{"tasks": [], "project": 1' + "0" * 300 + "}", "task-id-10**300": '{"tasks": [{"id": 1' + "0" * 300
    + ', "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": ' + json.dumps(CONFIG) + "}",
    "task-id-4301-digits": '{"tasks": [{"id": ' + "7" * 4301 + ', "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": '
    + json.dumps(CONFIG) + "}",
    "task-id-float": '{"tasks": [{"id": 1.5, "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": ' + json.dumps(CONFIG) + "}",
    "label-config-int": '{"tasks": [], "project": "1", "label_config": 5}', "label-config-garbage": '{"tasks": [{"id": 1, "data": {}}], "project": "1", "label_config": "<<<"}',
    "params-string": '{"tasks": [], "project": "1", "params": "x"}', "context-list": '{"tasks": [], "project": "1", "params": {"context": []}}',
    "context-result-garbage": '{"tasks": [{"id": 1, "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": ' + json.dumps(CONFIG)
    + ', "params": {"context": {"result": [1, null, {"from_name": "caption", "value": {"text": [5]}}, {"value": "x"}]}}}',
    "context-prefix-huge": '{"tasks": [{"id": 1, "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": ' + json.dumps(CONFIG)
    + ', "params": {"context": {"result": [{"from_name": "caption", "type": "textarea", "value": {"text": ["' + "a red " * 20000 + '"]}}]}}}',
    "context-prefix-surrogate": '{"tasks": [{"id": 1, "data": {"image": "' + GOOD + '"}}], "project": "1", "label_config": ' + json.dumps(CONFIG)
    + ', "params": {"context": {"result": [{"from_name": "caption", "type": "textarea", "value": {"text": ["\\ud800"]}}]}}}',
    "many-tasks": json.dumps(predict_body(*[task(i, GOOD) for i in range(300)])),
    "many-distinct-bad": json.dumps(predict_body(*[task(i, f"/data/upload/1/missing{i}.png") for i in range(200)])),
    "project-unknown-no-config": '{"tasks": [{"id": 1, "data": {"image": "' + GOOD + '"}}], "project": "987654"}',
}


@pytest.mark.parametrize("name", list(PREDICT_BODIES))
def test_predict_bodies(backend: Backend, name: str) -> None:
    backend.send("POST", "/predict", raw=PREDICT_BODIES[name].encode(), limit=SLOW)


@pytest.mark.parametrize("mode", ["html", "not-json-object", "access-int", "status-500", "nested", "huge-exp", "nan-exp"])
def test_token_refresh_answers(backend: Backend, mode: str) -> None:
    backend.fake.refresh_mode = mode
    try:
        answer = backend.send("POST", "/predict", body=predict_body(task(1, GOOD)), limit=SLOW)
    finally:
        backend.fake.refresh_mode = "ok"
    if answer.status_code == 200:
        assert answer.json()["results"] == [[]] or answer.json()["results"][0], answer.text
    answer = backend.send("POST", "/predict", body=predict_body(task(1, GOOD)), limit=SLOW)
    assert answer.status_code == 200 and answer.json()["results"][0], (
        f"after refresh mode {mode}: {answer.text[:300]}\n{tail(backend.log, 8)}")


# -- /webhook --------------------------------------------------------------------------------------------------

def annotation(annotation_id: Any = 7, task_id: Any = 1, text: Any = "a red circle") -> dict[str, Any]:
    return {"id": annotation_id, "task": task_id, "was_cancelled": False,
            "result": [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]}


def event(action: str = "ANNOTATION_CREATED", **changes: Any) -> dict[str, Any]:
    body = {"action": action, "annotation": annotation(), "task": task(1, GOOD),
            "project": {"id": 1, "label_config": CONFIG}}
    body.update(changes)
    return body


def _big(body: dict[str, Any], marker: str, digits: str) -> bytes:
    return json.dumps(body).replace(f'"{marker}"', digits).encode()


WEBHOOKS: dict[str, bytes] = {
    "action-null": json.dumps(event(action=None)).encode(), "action-int": json.dumps(event(action=5)).encode(),  # type: ignore[arg-type]
    "action-list": json.dumps(event(action=[])).encode(), "action-empty": json.dumps(event(action="")).encode(),  # type: ignore[arg-type]
    "action-lone-surrogate": json.dumps(event()).replace('"ANNOTATION_CREATED"', '"\\ud800"').encode(),
    "action-huge": json.dumps(event(action="A" * 100000)).encode(), "action-nul": json.dumps(event(action="ANNOTATION_CREATED\x00")).encode(),
    "no-project": json.dumps({k: v for k, v in event().items() if k != "project"}).encode(),
    "project-id-10**300": _big(event(project={"id": "@"}), "@", "1" + "0" * 300),
    "project-id-4301-digits": _big(event(project={"id": "@", "label_config": CONFIG}), "@", "1" * 4301),
    "project-id-string-digits": json.dumps(event(project={"id": "1" * 4400, "label_config": CONFIG})).encode(),
    "project-id-negative": json.dumps(event(project={"id": -1, "label_config": CONFIG})).encode(),
    "project-id-float": json.dumps(event(project={"id": 1.5, "label_config": CONFIG})).encode(),
    "project-id-true": json.dumps(event(project={"id": True, "label_config": CONFIG})).encode(),
    "project-id-2**63": json.dumps(event(project={"id": 2**63, "label_config": CONFIG})).encode(),
    "project-label-config-garbage": json.dumps(event(project={"id": 1, "label_config": "<<<"})).encode(),
    "project-label-config-deep": json.dumps(event(project={"id": 1, "label_config": SCHEMAS["deep-nesting"]})).encode(),
    "annotation-id-10**300": _big(event(annotation=annotation("@")), "@", "1" + "0" * 300),
    "annotation-id-2**63": json.dumps(event(annotation=annotation(2**63))).encode(),
    "annotation-id-negative": json.dumps(event(annotation=annotation(-5))).encode(),
    "annotation-text-int": json.dumps(event(annotation=annotation(text=5))).encode(),
    "annotation-text-huge": json.dumps(event(annotation=annotation(text="a red " * 200000))).encode(),
    "annotation-text-surrogate": json.dumps(event(annotation=annotation(text="@"))).replace('"@"', '"\\ud800"').encode(),
    "annotation-text-nul": json.dumps(event(annotation=annotation(text="a\x00b"))).encode(),
    "annotation-text-empty": json.dumps(event(annotation=annotation(text=""))).encode(),
    "annotation-result-garbage": json.dumps(event(annotation={"id": 1, "task": 1, "result": [1, None, "x", {"value": 5}]})).encode(),
    "annotation-result-dict": json.dumps(event(annotation={"id": 1, "task": 1, "result": {"a": 1}})).encode(),
    "annotation-list-empty": json.dumps(event(annotation=[])).encode(),
    "annotation-task-mismatch": json.dumps(event(annotation=annotation(task_id=99))).encode(),
    "task-id-10**300": _big(event(task={"id": "@", "data": {"image": GOOD}}), "@", "1" + "0" * 300),
    "task-image-bad-port": json.dumps(event(task=task(1, "http://127.0.0.1:99999/x.png"))).encode(),
    "task-image-int": json.dumps(event(task=task(1, 5))).encode(),
    "task-data-list": json.dumps(event(task={"id": 1, "data": []})).encode(),
    "tasks-many": json.dumps(event("ANNOTATIONS_CREATED", annotation=[annotation(i, i) for i in range(2000)],
                                   task=[task(i, GOOD) for i in range(2000)])).encode(),
    "updated-at-garbage": json.dumps(event("ANNOTATION_UPDATED", annotation={**annotation(), "updated_at": "\x00" * 100})).encode(),
    "deleted-ids-huge": _big({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "@"}], "project": {"id": 1}}, "@", "1" + "0" * 300),
    "deleted-ids-2**63": json.dumps({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2**63}], "project": {"id": 1}}).encode(),
    "deleted-not-list": json.dumps({"action": "ANNOTATIONS_DELETED", "annotations": {"id": 1}, "project": {"id": 1}}).encode(),
    "deleted-one-null": json.dumps({"action": "ANNOTATION_DELETED", "annotation": None, "project": {"id": 1}}).encode(),
    "deleted-many": json.dumps({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in range(50000)], "project": {"id": 1}}).encode(),
    "tasks-deleted-huge": _big({"action": "TASKS_DELETED", "tasks": [{"id": "@"}], "project": {"id": 1}}, "@", "9" * 4301),
    "tasks-deleted-not-list": json.dumps({"action": "TASKS_DELETED", "tasks": 5, "project": {"id": 1}}).encode(),
    "train-project-10**300": _big({"action": "START_TRAINING", "project": {"id": "@"}}, "@", "1" + "0" * 300),
    "train-project-negative": json.dumps({"action": "START_TRAINING", "project": {"id": -1}}).encode(),
    "train-project-string": json.dumps({"action": "START_TRAINING", "project": {"id": "x"}}).encode(),
    "train-project-2**63": json.dumps({"action": "START_TRAINING", "project": {"id": 2**63}}).encode(),
    "unknown-action": json.dumps({"action": "PROJECT_UPDATED", "project": {"id": 1}}).encode(),
}


@pytest.mark.parametrize("name", list(WEBHOOKS))
def test_webhooks(backend: Backend, name: str) -> None:
    backend.send("POST", "/webhook", raw=WEBHOOKS[name], limit=SLOW)


# -- GET routes, methods, paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("project", ["abc", "1" * 100, "-1", "%00", "%ff", "1.5", "9" * 18, "9" * 19, "1.1795353650",
                                     "%D9%A3", "", "1%0A2", "1&project=2"])
def test_versions_query(backend: Backend, project: str) -> None:
    backend.send("GET", f"/versions?project={project}", limit=SLOW)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/versions"), ("PUT", "/predict"), ("DELETE", "/health"),
    ("GET", "/predict"), ("POST", "/health"), ("POST", "/metrics"), ("GET", "/%ff"), ("GET", "/../../etc/passwd"),
    ("GET", "/" + "a" * 8000), ("OPTIONS", "/predict"), ("HEAD", "/health"), ("PATCH", "/webhook"), ("GET", "/setup/refused/"),
    ("GET", "/health?" + "x=1&" * 5000)])
def test_methods_and_paths(backend: Backend, method: str, path: str) -> None:
    backend.send(method, path)


def test_zz_backend_survived_without_tracebacks(backend: Backend) -> None:
    """Last: the backend still answers and predicts, and its log holds no traceback."""
    assert backend.process.poll() is None, "the backend died"
    answer = backend.send("POST", "/predict", body=predict_body(task(1, GOOD)), limit=SLOW)
    assert answer.status_code == 200 and answer.json()["results"][0]
    text = backend.log.read_text(errors="replace")
    assert "Traceback" not in text, "the backend logged tracebacks:\n" + "\n".join(
        line for line in text.splitlines() if "Error" in line or "error" in line)[-4000:]
