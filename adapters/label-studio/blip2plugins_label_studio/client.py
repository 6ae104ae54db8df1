"""Label Studio as this backend talks to it: task images and the project export, over plain HTTP.

Credentials (``LABEL_STUDIO_API_KEY``): a personal access token (a JWT refresh token) is exchanged at
``POST /api/token/refresh/`` for an access token, cached until shortly before it expires and sent as
``Authorization: Bearer``; a legacy key is sent as ``Authorization: Token``. They go to the
Label Studio host (``LABEL_STUDIO_URL``) only.

Image references are resolved against that host: ``/data/upload/...`` and other relative paths,
cloud URIs (``s3://``, ``gs://``, ``azure-blob://``, through ``/tasks/<id>/resolve/``), absolute
URLs on the Label Studio host. Other hosts are refused unless allow-listed (then fetched without
credentials and without following redirects); ``data:`` URIs are decoded locally. Byte caps and
timeouts come from :class:`~blip2plugins.types.ImageLimits`; the bytes then go through the core
loader's checks (pixel cap, decoding) wherever they are used.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import urllib.parse
from typing import Any, Iterable

import httpx2
from blip2plugins.errors import ImageError
from blip2plugins.types import ImageLimits

from .errors import LabelStudioError

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
_REFRESH_PATH = "/api/token/refresh/"
_EARLY = 30.0  # renew an access token this many seconds before it expires
_USER_AGENT = "blip2plugins-label-studio"


def is_personal_token(key: str) -> bool:
    """Whether ``key`` is a JWT (a personal access token) rather than a legacy API key."""
    return _jwt_part(key, 0).get("alg") is not None


def describe_url(url: str) -> str:
    """A URL fit for logs: no credentials, no query string (presigned URLs carry signatures there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    origin = f"{parts.scheme}://{host}" if parts.scheme else ""
    text = f"{origin}{parts.path}" + ("?..." if parts.query else "")
    return text if len(text) <= 200 else text[:197] + "..."


class LabelStudioClient:
    """Fetches task images and project exports from one Label Studio instance. Thread-safe."""

    def __init__(self, url: str | None, api_key: str | None, *, allow_hosts: Iterable[str] = (),
                 limits: ImageLimits | None = None, transport: httpx2.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self._origin = _origin(self.url) if self.url else None
        self._key = api_key
        self._personal = bool(api_key) and is_personal_token(api_key)  # type: ignore[arg-type]
        self._allow = {h.lower() for h in allow_hosts}
        self.limits = limits or ImageLimits()
        self._access: tuple[str, float] | None = None
        self._lock = threading.Lock()
        timeout = httpx2.Timeout(self.limits.read_timeout, connect=self.limits.connect_timeout)
        self._http = httpx2.Client(timeout=timeout, transport=transport, headers={"User-Agent": _USER_AGENT})

    def close(self) -> None:
        self._http.close()

    # -- images ----------------------------------------------------------------------------------

    def image_bytes(self, ref: str, task_id: int | str | None = None) -> bytes:
        """The bytes of the task image ``ref`` (``data:`` URIs decoded), or :class:`ImageError` saying why not.

        They are not decoded here: the caller hands them to the core loader (the host does), which checks them.
        """
        if ref[:5].lower() == "data:":
            from blip2plugins.default_sources import load_data_uri

            return load_data_uri(ref, self.limits)
        url, ours = self.resolve(ref, task_id)
        return self._download(url, ours)

    @staticmethod
    def per_task(ref: str) -> bool:
        """Whether fetching ``ref`` depends on its task (a cloud storage URI, resolved through the task)."""
        return urllib.parse.urlsplit(ref).scheme.lower() in CLOUD_SCHEMES

    def resolve(self, ref: str, task_id: int | str | None = None) -> tuple[str, bool]:
        """The URL to fetch for an image reference, and whether it is Label Studio's (sent with credentials)."""
        parts = urllib.parse.urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise ImageError(describe_url(ref), "a cloud storage URI needs the task id to be resolved")
            encoded = base64.urlsafe_b64encode(ref.encode()).decode()
            return self._on_label_studio(f"/tasks/{task_id}/resolve/?fileuri={encoded}", ref), True
        if scheme in ("http", "https"):
            if self._origin is not None and _origin(ref) == self._origin:
                return ref, True
            host = (parts.hostname or "").lower()
            port_host = f"{host}:{parts.port}" if parts.port else host
            if "*" in self._allow or host in self._allow or port_host in self._allow:
                return ref, False
            raise ImageError(describe_url(ref), f"refused: {host or 'no host'} is neither Label Studio's host "
                                                "(LABEL_STUDIO_URL) nor allow-listed (--allow-host)")
        if not scheme and not parts.netloc and ref.startswith("/"):
            return self._on_label_studio(ref, ref), True
        raise ImageError(describe_url(ref), "unsupported image reference (expected a Label Studio path, "
                                            "an http(s) URL, a data: URI or a cloud storage URI)")

    def _on_label_studio(self, path: str, ref: str) -> str:
        if self.url is None:
            raise ImageError(describe_url(ref), "LABEL_STUDIO_URL is not set, so Label Studio's files cannot be fetched")
        return self.url + path

    def _download(self, url: str, ours: bool) -> bytes:
        where = describe_url(url)
        response = self._send("GET", url, ours, stream=True, accept="image/*, */*;q=0.5")
        try:
            if not response.is_success:
                raise ImageError(where, f"HTTP {response.status_code}{_hint(response.status_code, ours)}")
            length = response.headers.get("Content-Length", "")
            if length.strip().isdigit() and int(length) > self.limits.max_bytes:
                raise ImageError(where, f"too large ({int(length)} bytes > limit {self.limits.max_bytes})")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise ImageError(where, f"too large (over the limit of {self.limits.max_bytes} bytes)")
                chunks.append(chunk)
            return b"".join(chunks)
        except httpx2.HTTPError as exc:
            raise ImageError(where, _network_reason(exc)) from None
        finally:
            response.close()

    # -- the API ---------------------------------------------------------------------------------

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """``GET`` a Label Studio API path with credentials; :class:`LabelStudioError` on failure."""
        url = self._on_label_studio_api(path)
        try:
            response = self._send("GET", url, True, params=params)
            if not response.is_success:
                raise LabelStudioError(f"Label Studio answered HTTP {response.status_code} to GET {path}"
                                       f"{_hint(response.status_code, True)}")
            return response.json()
        except ImageError as exc:
            raise LabelStudioError(str(exc)) from None
        except httpx2.HTTPError as exc:
            raise LabelStudioError(f"GET {path}: {_network_reason(exc)}") from None
        except ValueError:
            raise LabelStudioError(f"GET {path}: Label Studio's answer is not JSON") from None

    def labeled_tasks(self, project_id: int | str) -> list[dict[str, Any]]:
        """Every task of the project that has annotations, with them (the JSON export)."""
        tasks = self.get_json(f"/api/projects/{project_id}/export", {"exportType": "JSON", "download_all_tasks": "false"})
        if not isinstance(tasks, list):
            raise LabelStudioError(f"the export of project {project_id} is not a list of tasks")
        return tasks

    def _on_label_studio_api(self, path: str) -> str:
        if self.url is None:
            raise LabelStudioError("LABEL_STUDIO_URL is not set, so Label Studio's API cannot be reached")
        return self.url + path

    # -- transport and credentials ----------------------------------------------------------------

    def _send(self, method: str, url: str, ours: bool, *, stream: bool = False, accept: str = "application/json",
              params: dict[str, Any] | None = None) -> httpx2.Response:
        """One request; Label Studio's get credentials (renewed once on a 401) and may redirect, others may not."""
        for attempt in (0, 1):
            headers = {"Accept": accept, **(self._credentials(renew=attempt == 1) if ours else {})}
            request = self._http.build_request(method, url, headers=headers, params=params)
            try:
                response = self._http.send(request, stream=stream, follow_redirects=ours)
            except httpx2.HTTPError as exc:
                raise ImageError(describe_url(url), _network_reason(exc)) from None
            if response.status_code == 401 and ours and self._personal and attempt == 0:
                response.close()
                continue
            return response
        raise AssertionError("unreachable")

    def _credentials(self, *, renew: bool = False) -> dict[str, str]:
        if not self._key:
            return {}
        if not self._personal:
            return {"Authorization": f"Token {self._key}"}
        return {"Authorization": f"Bearer {self._access_token(renew)}"}

    def _access_token(self, renew: bool) -> str:
        with self._lock:
            if self._access is not None and not renew and time.time() < self._access[1]:
                return self._access[0]
            url = self._on_label_studio_api(_REFRESH_PATH)
            try:
                response = self._http.post(url, json={"refresh": self._key})
            except httpx2.HTTPError as exc:
                raise ImageError(describe_url(url), f"cannot renew the access token: {_network_reason(exc)}") from None
            access = response.json().get("access") if response.is_success else None
            if not isinstance(access, str):
                raise ImageError(describe_url(url), f"Label Studio refused to renew the access token from "
                                                    f"LABEL_STUDIO_API_KEY (HTTP {response.status_code}): is the "
                                                    "personal access token valid?")
            expires = _jwt_part(access, 1).get("exp")
            deadline = float(expires) - _EARLY if isinstance(expires, (int, float)) else time.time() + 240.0
            self._access = (access, deadline)
            return access


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _jwt_part(token: str, index: int) -> dict[str, Any]:
    """The decoded JSON of one part of a JWT (not verified: the server does that), or ``{}``."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(pieces[index] + "=" * (-len(pieces[index]) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _hint(status: int, ours: bool) -> str:
    if ours and status in (401, 403):
        return (" (check LABEL_STUDIO_API_KEY: a personal access token, or a legacy token where the organisation "
                "allows them)")
    return ""


def _network_reason(exc: httpx2.HTTPError) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx2.TooManyRedirects):
        return "too many redirects"
    return f"unreachable ({type(exc).__name__})"
