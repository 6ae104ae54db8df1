"""Walkthrough: the Label Studio ML backend, with this script playing Label Studio's part.

Runs offline on the bundled demo model. It starts the backend (the app behind ``blip2 serve
label-studio``) on loopback and sends it what Label Studio would: ``/setup`` when a project connects,
``/predict`` for "Retrieve predictions", one ``ANNOTATION_CREATED`` webhook per caption a team accepts
(here: squares called "tiles"), and ``START_TRAINING``. The backend trains a LoRA adapter in the
background, its eval gate promotes it, and the next predictions carry the new model version.
Task images travel as ``data:`` URIs, so no Label Studio is needed; with a real one they are
``/data/upload/...`` paths fetched from ``LABEL_STUDIO_URL``.

    python examples/label_studio_walkthrough.py
"""

from __future__ import annotations

import base64
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from blip2plugins.demo import scenarios, world
from blip2plugins_label_studio import Settings, create_app

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image"/>
  <TextArea name="count" toName="image" question="how many shapes?"/>
</View>"""
PROJECT = {"id": 1, "label_config": CONFIG}
#: The demo scenarios' recipe for the team's words when published; else the backend's default LoRA recipe.
RECIPE = "blip2plugins.demo.scenarios:VOCABULARY_CONFIG" if hasattr(scenarios, "VOCABULARY_CONFIG") else None


def image_uri(scene: world.Scene) -> str:
    out = io.BytesIO()
    world.render(scene).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def task(task_id: int, scene: world.Scene) -> dict:
    return {"id": task_id, "data": {"image": image_uri(scene)}}


def show(title: str, answer: httpx.Response) -> dict:
    body = answer.json()
    print(f"\n{title}: HTTP {answer.status_code}")
    return body


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="blip2-ls-walkthrough-"))
    settings = Settings(model="demo", model_dir=str(folder / "model-dir"), adapter_store=str(folder / "adapters"),
                        train_config=RECIPE, train_threads=2, log_level="warning")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, timeout=300)
    while True:  # the server answers at once; the model loads in the background
        try:
            health = client.get("/health").json()
            if health["ready"]:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    print(f"backend on {base}: {health}")

    setup = show("POST /setup (a project connects)", client.post("/setup", json={
        "project": "1.1795353650", "schema": CONFIG, "hostname": "http://localhost:8080", "access_token": "...",
        "extra_params": None}))
    print(f"  model_version {setup['model_version']}")

    shown = scenarios.scenes(4, "walkthrough-shown", keep=scenarios.has("square"))
    body = {"tasks": [task(i, s) for i, s in enumerate(shown)], "project": "1.1795353650", "label_config": CONFIG,
            "params": {"context": None}}
    results = show("POST /predict (Retrieve predictions, 4 tasks in one batch)", client.post("/predict", json=body))
    for item in results["results"]:
        regions = {r["from_name"]: r["value"]["text"][0] for r in item["result"]}
        print(f"  {regions}  score {item['score']:.3f}  {item['model_version']}")

    labeled = scenarios.vocabulary_labels(32, 32, seed=1)
    print(f"\nthe team accepts {len(labeled)} captions, e.g. {labeled[0][1]!r}: one ANNOTATION_CREATED webhook each")
    for i, (scene, caption) in enumerate(labeled):
        result = [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [caption]}}]
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": PROJECT, "task": task(100 + i, scene),
                                      "annotation": {"id": 1000 + i, "result": result, "task": 100 + i}})

    began = time.perf_counter()
    queued = show("POST /webhook START_TRAINING", client.post("/webhook", json={"action": "START_TRAINING",
                                                                                "project": PROJECT}))
    print(f"  training {queued['training']}: a background process trains a LoRA adapter on the accepted labels")
    while True:
        listing = client.get("/versions", params={"project": 1}).json()["projects"][0]
        if listing["runs"] and not any(listing["training"].values()):
            break
        time.sleep(2)
    run = listing["runs"][0]
    print(f"  run {run['status']} after {time.perf_counter() - began:.0f} s: {run['reason']}")
    print(f"  /versions: {client.get('/versions').json()['versions']}")

    results = show("POST /predict again (the new model version)", client.post("/predict", json=body))
    for item in results["results"]:
        regions = {r["from_name"]: r["value"]["text"][0] for r in item["result"]}
        print(f"  {regions}  score {item['score']:.3f}  {item['model_version']}")
    expected = [scenarios.team_caption(s) for s in shown]
    print(f"  the team would write: {expected}")

    metrics = client.get("/metrics").text.splitlines()
    print("\nGET /metrics (excerpt):")
    for line in metrics:
        if line.startswith(("blip2_label_studio_model_version_info", "blip2_label_studio_training_runs_total",
                            "blip2_label_studio_predict_batch_tasks_sum")):
            print(f"  {line}")
    server.should_exit = True


if __name__ == "__main__":
    main()
