"""The outermost middleware: basic auth, latency metrics, and JSON errors without tracebacks."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import failure
from .metrics import ROUTES

if TYPE_CHECKING:
    from .app import Backend

log = logging.getLogger("blip2plugins_label_studio")


class Guard:
    """Basic auth, latency metrics per route and status class, and a JSON 500 for what escaped the app."""

    def __init__(self, app: ASGIApp, backend: Backend, credentials: tuple[str, str] | None) -> None:
        self.app = app
        self.backend = backend
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = {"code": 500, "sent": False}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            if self.credentials is not None and not self._authorised(scope):
                if route == "/webhook":
                    log.warning("a webhook without valid credentials was refused: register the backend URL as "
                                "http://USER:PASS@host:port, or add the Authorization header to the project's webhook")
                await error_response(401, "authentication required", headers={"WWW-Authenticate": 'Basic realm="blip2"'})(
                    scope, receive, watch)
            else:
                await self.app(scope, receive, watch)
        except Exception:  # answered already by the app's handler (Starlette re-raises for the server's log)
            failure(log, "%s %s failed", scope.get("method"), route)
            if not status["sent"]:
                await error_response(500, "internal error; the backend's log has the details")(scope, receive, watch)
        finally:
            self.backend.metrics.latency.labels(route, f"{status['code'] // 100}xx").observe(time.perf_counter() - started)

    def _authorised(self, scope: Scope) -> bool:
        assert self.credentials is not None
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user.encode(), self.credentials[0].encode()) & secrets.compare_digest(
            password.encode(), self.credentials[1].encode())


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON error every route answers with: ``{"status": "ERROR", "error": message}``."""
    return JSONResponse({"status": "ERROR", "error": message}, status_code=status, headers=headers)
