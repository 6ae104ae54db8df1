"""A fake Label Studio on loopback (a thread of the test process) that the real backend process talks to:
uploads (good and hostile images), token refresh (JSON, or hostile answers on demand), the project export."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def jwt(kind: str, lifetime: float) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'token_type': kind, 'exp': time.time() + lifetime})}.c2ln"


class FakeLabelStudio:
    def __init__(self) -> None:
        self.key = jwt("refresh", 86400)
        self.files: dict[str, bytes] = {}
        self.refresh_mode = "ok"  # ok | html | not-json-object | access-int | status-500 | nested | huge-exp
        self.export: bytes = b"[]"
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                fake.requests.append(("POST", self.path))
                if self.path.startswith("/api/token/refresh"):
                    mode = fake.refresh_mode
                    # lifetime 30 s: the client renews 30 s early, so every request refreshes
                    answers = {
                        "ok": (200, json.dumps({"access": jwt("access", 30)}).encode(), "application/json"),
                        "html": (200, b"<!DOCTYPE html><html><body>Login</body></html>", "text/html"),
                        "not-json-object": (200, b"[1, 2]", "application/json"),
                        "access-int": (200, b'{"access": 5}', "application/json"),
                        "status-500": (500, b"<html>Server Error</html>", "text/html"),
                        "nested": (200, b"[" * 100000 + b"]" * 100000, "application/json"),
                        "huge-exp": (200, json.dumps({"access": "a." + base64.urlsafe_b64encode(
                            b'{"exp": ' + b"9" * 5000 + b"}").decode().rstrip("=") + ".c"}).encode(), "application/json"),
                        "nan-exp": (200, json.dumps({"access": "a." + base64.urlsafe_b64encode(
                            b'{"exp": NaN}').decode().rstrip("=") + ".c"}).encode(), "application/json"),
                    }
                    self._send(*answers[mode])
                    return
                self._send(404, b"{}")

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(("GET", self.path))
                path = self.path.split("?")[0]
                if path in fake.files:
                    self._send(200, fake.files[path], "image/png")
                elif path.endswith("/export"):
                    self._send(200, fake.export)
                elif path.startswith("/redirect-loop"):
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path.startswith("/length-lie"):
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"\x89PNG\r\n\x1a\n")
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self._send(404, b'{"detail": "not found"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-label-studio", daemon=True)

    def __enter__(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
