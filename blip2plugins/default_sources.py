"""The built-in image sources: ``data:`` URIs, ``http(s)://`` URLs and ``file://`` URLs.

HTTP uses :mod:`httpx2`, through one client per process whose connection pool is shared by every
thread: images from the same server reuse kept-alive connections instead of paying a TCP (and TLS)
handshake each. Loaders return bytes; the core (:func:`blip2plugins.images.load_image`) decides by
those bytes whether they are an image.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
import urllib.parse
from typing import Callable

import httpx2

from .errors import ImageError
from .hookspecs import hookimpl
from .images import short_reason, describe, read_path
from .types import ImageLimits, ImageSource

__all__ = ["SOURCES", "register_image_sources"]

_USER_AGENT = "blip2plugins"
_client: httpx2.Client | None = None
_client_lock = threading.Lock()


def http_client() -> httpx2.Client:
    """The process's shared HTTP client (created on first use; a forked child gets its own)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx2.Client(headers={"User-Agent": _USER_AGENT, "Accept": "image/*, */*;q=0.5"},
                                    follow_redirects=True, max_redirects=5)
        return _client


def _forget_client() -> None:
    """In a forked child: drop the parent's client (its pooled sockets belong to the parent)."""
    global _client, _client_lock
    _client, _client_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_client)


def load_data_uri(ref: str, limits: ImageLimits) -> bytes:
    """Decode a ``data:`` URI, base64 (``;base64``) or percent-encoded."""
    description = describe(ref)
    header, comma, payload = ref[len("data:") :].partition(",")
    if not comma:
        raise ImageError(description, "malformed data URI (no comma)")
    if not header.lower().split(";")[-1].strip() == "base64":
        return urllib.parse.unquote_to_bytes(payload)
    text = re.sub(r"\s+", "", urllib.parse.unquote(payload)).replace("-", "+").replace("_", "/").rstrip("=")
    try:  # URL-safe alphabets and missing padding are common in the wild; anything else is refused
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(description, f"bad base64 data ({exc})") from exc


def load_http(url: str, limits: ImageLimits) -> bytes:
    """Download ``url`` with the timeouts and the byte cap of ``limits`` (the body, however steadily
    it trickles in, within ``download_timeout``)."""
    description = describe(url)
    timeout = httpx2.Timeout(limits.read_timeout, connect=limits.connect_timeout)
    give_up = time.monotonic() + limits.download_timeout
    try:
        with http_client().stream("GET", url, timeout=timeout) as response:
            if not response.is_success:
                raise ImageError(description, f"HTTP {response.status_code}")
            length = response.headers.get("Content-Length", "")
            if length.strip().isdigit() and int(length) > limits.max_bytes:
                raise ImageError(description, f"too large ({int(length)} bytes > limit {limits.max_bytes})")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ImageError(description, f"too large (over the limit of {limits.max_bytes} bytes)")
                if time.monotonic() > give_up:
                    raise ImageError(description, f"timed out (the download took longer than {limits.download_timeout:g} s)")
            return b"".join(chunks)
    except httpx2.TimeoutException as exc:
        raise ImageError(description, "timed out") from exc
    except httpx2.TooManyRedirects as exc:
        raise ImageError(description, "too many redirects") from exc
    except httpx2.InvalidURL as exc:
        raise ImageError(description, f"invalid URL: {short_reason(exc)}") from exc
    except httpx2.HTTPError as exc:
        raise ImageError(description, f"unreachable: {short_reason(exc)}") from exc


def load_file_url(url: str, limits: ImageLimits) -> bytes:
    """Read a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``) as a local path; its
    percent escapes are the path's bytes (``%FF``: a byte that is not UTF-8)."""
    description = describe(url)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(description, f"unsupported file URL host {parts.netloc!r}")
    return read_path(os.fsdecode(urllib.parse.unquote_to_bytes(parts.path)), limits.max_bytes, description)


SOURCES: list[ImageSource] = [
    ImageSource("data", load_data_uri, scheme="data"),
    ImageSource("http", load_http, scheme="http"),
    ImageSource("https", load_http, scheme="https"),
    ImageSource("file", load_file_url, scheme="file"),
]


@hookimpl
def register_image_sources(register: Callable[[ImageSource], None]) -> None:
    """Register the built-in image sources."""
    for source in SOURCES:
        register(source)
