"""Request bodies as Label Studio 1.23 sends them (shapes recorded in shared/notes/label-studio.md),
with the secrets real payloads carry, so that tests can check they never reach the logs."""

from __future__ import annotations

import io
from typing import Any

from blip2plugins.demo import world

PROJECT = 1
PROJECT_UID = "1.1795353650"
LABEL_STUDIO_URL = "http://label-studio.test:8080"
SECRETS = ("project-token-4f9a7c2e", "task-data-pw-81b3", "legacy-key-0123456789abcdef0123456789abcdef")
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image" editable="true" maxSubmissions="1" rows="2"/>
</View>"""
QUESTION_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image"/>
  <TextArea name="count" toName="image" question="how many shapes?"/>
</View>"""
NOTHING_TO_FILL = """<View>
  <Image name="image" value="$image"/>
  <Choices name="kind" toName="image"><Choice value="circle"/><Choice value="square"/></Choices>
</View>"""


def png(scene: world.Scene) -> bytes:
    out = io.BytesIO()
    world.render(scene).save(out, format="PNG")
    return out.getvalue()


def upload_path(task_id: int) -> str:
    return f"/data/upload/{PROJECT}/0a1b2c3d-img{task_id}.png"


def task(task_id: int, image: str | None = None) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": image or upload_path(task_id)}, "meta": {}, "annotations": [],
            "predictions": [], "created_at": "2026-11-30T04:00:00.000000Z", "updated_at": "2026-11-30T04:00:00.000000Z",
            "inner_id": task_id, "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0,
            "project": PROJECT, "file_upload": task_id}


def setup_body(schema: str = CONFIG) -> dict[str, Any]:
    return {"project": PROJECT_UID, "schema": schema, "hostname": "http://localhost:8080",
            "access_token": SECRETS[2], "extra_params": None}


def predict_body(tasks: list[dict[str, Any]], *, schema: str = CONFIG, context: Any = None) -> dict[str, Any]:
    return {"tasks": tasks, "project": PROJECT_UID, "label_config": schema,
            "params": {"login": "annotator", "password": SECRETS[1], "context": context}}


def project(schema: str = CONFIG) -> dict[str, Any]:
    return {"id": PROJECT, "title": "captions", "label_config": schema, "token": SECRETS[0],
            "task_data_login": "annotator", "task_data_password": SECRETS[1], "created_by": 1,
            "parsed_label_config": {"caption": {"type": "TextArea", "to_name": ["image"], "inputs": [
                {"type": "Image", "value": "image"}], "labels": []}}}


def annotation(annotation_id: int, task_id: int, text: str | None, *, cancelled: bool = False,
               updated_at: str = "2026-11-30T05:00:00.000000Z", from_name: str = "caption") -> dict[str, Any]:
    result = [] if text is None else [{"id": f"r{annotation_id}", "from_name": from_name, "to_name": "image",
                                       "type": "textarea", "value": {"text": [text]}, "origin": "manual"}]
    return {"id": annotation_id, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-11-30T05:00:00.000000Z", "updated_at": updated_at, "lead_time": 3.2,
            "task": task_id, "project": PROJECT, "completed_by": 1}


def annotation_event(action: str, annotation_id: int, task_id: int, text: str | None, **kwargs: Any) -> dict[str, Any]:
    return {"action": action, "annotation": annotation(annotation_id, task_id, text, **kwargs),
            "task": task(task_id), "project": project()}


def deleted_event(*annotation_ids: int) -> dict[str, Any]:
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in annotation_ids], "project": project()}


def start_training() -> dict[str, Any]:
    return {"action": "START_TRAINING", "project": project()}


def export_task(task_id: int, annotation_id: int, text: str) -> dict[str, Any]:
    """A task as the project's JSON export lists it."""
    return {**task(task_id), "annotations": [annotation(annotation_id, task_id, text)]}
