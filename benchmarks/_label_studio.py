"""Shared parts of the Label Studio backend benchmarks: a stand-in Label Studio serving task images, and
the backend app on uvicorn in this process (so a benchmark can also reach the backend's own host)."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx

TOKEN = "benchmark-legacy-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@contextmanager
def fake_label_studio(files: dict[str, bytes]) -> Iterator[str]:
    """Serve ``files`` (path -> bytes); yields the base URL. A wrong ``Authorization`` is refused, none is
    accepted (so that the host's own URL loader, which sends none, can fetch them too)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real server
        disable_nagle_algorithm = True  # headers and body are written apart: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            data = files.get(self.path)
            if self.headers.get("Authorization") not in (None, f"Token {TOKEN}"):
                self.send_error(401)
            elif data is None:
                self.send_error(404)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextmanager
def backend(settings: Any) -> Iterator[tuple[str, Any]]:
    """The backend app for ``settings`` on uvicorn in a thread; yields its URL and its ``Backend``, once ready."""
    import uvicorn

    from blip2plugins_label_studio.app import create_app

    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        raise RuntimeError("the backend did not become ready")
    try:
        yield url, app.app.state.backend
    finally:
        server.should_exit = True
        thread.join(30)


def predict_body(tasks: list[dict[str, Any]], label_config: str) -> dict[str, Any]:
    return {"tasks": tasks, "project": "1.1795353650", "label_config": label_config,
            "params": {"login": None, "password": None, "context": None}}


CONFIG = '<View><Image name="image" value="$image"/><TextArea name="caption" toName="image"/></View>'
