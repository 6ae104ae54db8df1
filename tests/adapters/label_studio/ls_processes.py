"""Servers as real processes on loopback: start, wait for, and stop them by process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session (so that its children are stopped with it), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)


def start_backend(port: int, log: Path, env: Mapping[str, str], *options: str) -> subprocess.Popen[bytes]:
    """``blip2 serve label-studio`` on ``port`` (with the integration loaded, whatever the test's plugins)."""
    return start([sys.executable, "-m", "blip2plugins.cli", "serve", "label-studio", "--port", str(port), *options],
                 log, {"BLIP2_PLUGINS": "label-studio", **env})


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float, **checks: Any) -> httpx.Response:
    """Poll ``url`` until it answers 200 (and its JSON has ``checks``); fails with the log's tail if it won't."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({process.returncode}):\n{tail(log)}")
        try:
            answer = httpx.get(url, timeout=2)
            last = answer.status_code
            if answer.status_code == 200 and all(answer.json().get(k) == v for k, v in checks.items()):
                return answer
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{url}: not ready after {timeout} s (last: {last}):\n{tail(log)}")


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a server started by :func:`start`: SIGTERM to its process group (its id), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
