"""A fake Label Studio for the backend's HTTP client, and helpers to reach the backend behind a test client."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx2

from blip2plugins_label_studio.app import Backend


def make_jwt(kind: str, lifetime: float = 300.0) -> str:
    """A JWT-shaped token (unsigned: the fake server checks it by value)."""
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'token_type': kind, 'exp': time.time() + lifetime})}.c2ln"


class FakeLabelStudio:
    """Answers the backend's requests to Label Studio: uploads, ``/api/token/refresh/``, the project export."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.personal = key.count(".") == 2
        self.files: dict[str, bytes] = {}
        self.export: list[dict[str, Any]] = []
        self.issued: set[str] = set()
        self.seen: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path, auth = request.url.path, request.headers.get("authorization")
        with self.lock:
            self.seen.append((request.method, path, auth))
        if request.url.host != "label-studio.test":
            return httpx2.Response(200, content=next(iter(self.files.values()), b""))
        if path == "/api/token/refresh/":
            if json.loads(request.content).get("refresh") != self.key:
                return httpx2.Response(401, json={"detail": "Token is invalid or expired"})
            access = make_jwt("access")
            self.issued.add(access)
            return httpx2.Response(200, json={"access": access})
        valid = auth in {f"Bearer {a}" for a in self.issued} if self.personal else auth == f"Token {self.key}"
        if not valid:
            return httpx2.Response(401, json={"detail": "Authentication credentials were not provided."})
        if path.startswith("/data/upload/"):
            data = self.files.get(path)
            return httpx2.Response(200, content=data) if data is not None else httpx2.Response(404)
        if path.endswith("/export"):
            return httpx2.Response(200, json=self.export)
        if path.startswith("/api/projects/"):
            return httpx2.Response(200, json={"id": int(path.split("/")[3])})
        return httpx2.Response(404)


def backend_of(client: Any) -> Backend:
    """The :class:`Backend` behind a test client's app."""
    return client.app.app.state.backend


def ready(client: Any, timeout: float = 120.0) -> Backend:
    """The backend, once its model has loaded."""
    backend = backend_of(client)
    backend.serving.loaded.result(timeout=timeout)
    return backend
