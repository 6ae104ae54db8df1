"""The built-in image sources: ``data:`` URIs, ``http(s)://`` URLs and ``file://`` URLs.

HTTP uses only the standard library (:mod:`urllib.request`). Loaders return bytes; the core
(:func:`blip2plugins.images.load_image`) decides by those bytes whether they are an image.
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from .errors import ImageError
from .hookspecs import hookimpl
from .images import _short, describe, read_limited, read_path
from .types import ImageLimits, ImageSource

__all__ = ["SOURCES", "register_image_sources"]

_USER_AGENT = "blip2plugins (+https://github.com/salesforce/LAVIS)"


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
    """Download ``url`` with the connect and read timeouts and the byte cap of ``limits``."""
    description = describe(url)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": "image/*, */*;q=0.5"})
    opener = urllib.request.build_opener(_HTTPHandler(limits.read_timeout), _HTTPSHandler(limits.read_timeout))
    try:
        response = opener.open(request, timeout=limits.connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ImageError(description, f"HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise ImageError(description, "timed out") from exc
        raise ImageError(description, f"unreachable: {_short(exc.reason)}") from exc
    except TimeoutError as exc:
        raise ImageError(description, "timed out") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ImageError(description, f"unreachable: {_short(exc)}") from exc
    except ValueError as exc:
        raise ImageError(description, f"invalid URL: {exc}") from exc
    with response:
        length = response.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > limits.max_bytes:
            raise ImageError(description, f"too large ({int(length)} bytes > limit {limits.max_bytes})")
        return read_limited(response, limits.max_bytes, description)


def load_file_url(url: str, limits: ImageLimits) -> bytes:
    """Read a ``file://`` URL (``file:///abs/path`` or ``file://localhost/abs/path``) as a local path."""
    description = describe(url)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(description, f"unsupported file URL host {parts.netloc!r}")
    return read_path(urllib.request.url2pathname(parts.path), limits.max_bytes, description)


class _ReadTimeoutMixin:
    """An HTTP(S) connection that connects under one timeout, then reads under another."""

    sock: Any

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)


class _HTTPConnection(_ReadTimeoutMixin, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeoutMixin, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._connection: Callable[..., http.client.HTTPConnection] = functools.partial(
            _HTTPConnection, read_timeout=read_timeout
        )

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        self._ssl_context = ssl.create_default_context()
        super().__init__(context=self._ssl_context)
        self._connection: Callable[..., http.client.HTTPSConnection] = functools.partial(
            _HTTPSConnection, read_timeout=read_timeout
        )

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._ssl_context)


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
