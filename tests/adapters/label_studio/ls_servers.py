"""Servers on 127.0.0.1 in this process: the backend app on uvicorn, and plain HTTP servers playing Label
Studio, an image host, or a hostile host that drips its answer a byte at a time."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

import httpx

from ls_processes import free_port

Answer = Callable[["LocalServer", BaseHTTPRequestHandler], None]


class LocalServer:
    """An HTTP/1.1 server on 127.0.0.1 answering ``routes[path]`` (the path without its query; ``"*"`` for the
    rest, else 404). Records ``(method, path, Authorization)`` of every request in ``seen``."""

    def __init__(self, routes: Mapping[str, Answer]) -> None:
        self.routes = dict(routes)
        self.seen: list[tuple[str, str, str | None]] = []
        self.stopped = threading.Event()
        self.dripping = 0  # answers being dripped now
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                self.answer()

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer()

            def answer(self) -> None:
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.seen.append((self.command, path, self.headers.get("Authorization")))
                server.routes.get(path, server.routes.get("*", reply(404)))(server, self)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.host = f"127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> LocalServer:
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()  # drips end, which closes their connections
        self.http.shutdown()
        self.http.server_close()

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path, _ in self.seen]


def reply(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Answer:
    """An answer with this status, body and headers."""
    def answer(server: LocalServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def raw(data: bytes) -> Answer:
    """These bytes as the whole answer (malformed HTTP included), then the connection closes."""
    def answer(server: LocalServer, handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(data)
        handler.close_connection = True

    return answer


def redirect(location: str, status: int = 302) -> Answer:
    return reply(status, headers={"Location": location})


def drip(interval: float) -> Answer:
    """A PNG's headers, then one byte every ``interval`` seconds until the server stops or the client leaves."""
    def answer(server: LocalServer, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        with server.lock:
            server.dripping += 1
        try:
            while not server.stopped.wait(interval):
                handler.wfile.write(b"\0")
                handler.wfile.flush()
        except OSError:
            pass
        finally:
            with server.lock:
                server.dripping -= 1
        handler.close_connection = True

    return answer


class LiveBackend:
    """The backend app for ``settings`` on uvicorn in a thread, on 127.0.0.1; ``http`` is a client for it."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from blip2plugins_label_studio.app import create_app

        self.app = create_app(settings)
        self.backend = self.app.app.state.backend
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self) -> LiveBackend:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the backend did not start")
            time.sleep(0.02)
        return self

    def ready(self, timeout: float = 120.0) -> LiveBackend:
        self.backend.serving.loaded.result(timeout=timeout)
        return self

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(30)
