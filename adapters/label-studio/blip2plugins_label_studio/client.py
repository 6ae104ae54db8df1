"""Label Studio as this backend talks to it: task images and the project export, over async HTTP.

Credentials (``LABEL_STUDIO_API_KEY``): a personal access token (a JWT refresh token) is exchanged at
``POST /api/token/refresh/`` for an access token, cached until shortly before it expires and sent as
``Authorization: Bearer``; a legacy key is sent as ``Authorization: Token``. They go to the
Label Studio host (``LABEL_STUDIO_URL``) only.

Image references are resolved against that host: ``/data/upload/...`` and other relative paths,
cloud URIs (``s3://``, ``gs://``, ``azure-blob://``, through ``/tasks/<id>/resolve/``), absolute
URLs on the Label Studio host. Other hosts are refused unless allow-listed (then fetched without
credentials); ``data:`` URIs are decoded locally. Redirects are followed by hand, at most
:data:`MAX_REDIRECTS`, each target checked like a task's URL (credentials only while the chain
stays on Label Studio). Byte caps and timeouts come from :class:`~blip2plugins.types.ImageLimits`,
``download_timeout`` bounding a whole download (redirects and a token renewal included); at most
``max_downloads`` run at once. Downloaded images are kept in a bounded cache (:mod:`.cache`): files
uploaded to Label Studio are reused as they are (they never change), others are revalidated by their
``ETag`` / ``Last-Modified``. The bytes then go through the core loader's checks (pixel cap, decoding)
wherever they are used.
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterable

import anyio
import httpx2
from blip2plugins.errors import ImageError
from blip2plugins.jsonfile import MAX_FILE_BYTES, JSONReadError, loads
from blip2plugins.types import ImageLimits

from .cache import ImageCache
from .errors import LabelStudioError
from .ids import is_id

if TYPE_CHECKING:
    from .settings import Settings

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
MAX_REDIRECTS = 5
_REFRESH_PATH = "/api/token/refresh/"
_EARLY = 30.0  # renew an access token this many seconds before it expires
_RETRY_AFTER = 5.0  # a refused renewal is not asked again for this many seconds (one batch asks once)
_UPLOADS = "/data/upload/"  # where Label Studio serves uploaded files
_PAGE = 500  # tasks per page of the task list
_SMALL_ANSWER = 1024 * 1024  # the token renewal's answer
_USER_AGENT = "blip2plugins-label-studio"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})  # one host, however spelled
_NETWORK_ERRORS = (httpx2.HTTPError, httpx2.InvalidURL)  # InvalidURL (e.g. a NUL in the path) is no HTTPError


def is_personal_token(key: str) -> bool:
    """Whether ``key`` is a JWT (a personal access token) rather than a legacy API key."""
    return _jwt_part(key, 0).get("alg") is not None


def describe_url(url: str) -> str:
    """A URL fit for logs: no credentials, no query string (presigned URLs carry signatures there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    host = parts.netloc.rpartition("@")[2]
    origin = f"{parts.scheme}://{host}" if parts.scheme else ""
    text = f"{origin}{parts.path}" + ("?..." if parts.query else "")
    return text if len(text) <= 200 else text[:197] + "..."


class LabelStudioClient:
    """Fetches task images and project exports from one Label Studio instance, on one event loop at a time."""

    def __init__(self, url: str | None, api_key: str | None, *, allow_hosts: Iterable[str] = (),
                 limits: ImageLimits | None = None, max_downloads: int = 16, cache_bytes: int = 64 * 1024 * 1024,
                 transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/") if url else None
        self._origin = _origin(_split(self.url)) if self.url else None
        self._key = api_key
        self._personal = bool(api_key) and is_personal_token(api_key)  # type: ignore[arg-type]
        self._allow = {h.lower() for h in allow_hosts}
        self.limits = limits or ImageLimits()
        self._access: tuple[str, float] | None = None
        self._refusal: tuple[ImageError, float] | None = None
        self._lock = anyio.Lock()
        self._slots = anyio.CapacityLimiter(max_downloads)
        self._cache = ImageCache(cache_bytes)
        self._uploads = urllib.parse.urlsplit(self.url or "").path + _UPLOADS
        timeout = httpx2.Timeout(self.limits.read_timeout, connect=self.limits.connect_timeout)
        self._http = httpx2.AsyncClient(timeout=timeout, transport=transport, headers={"User-Agent": _USER_AGENT})

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioClient:
        """The client a backend (or a training run) with ``settings`` uses."""
        return cls(settings.label_studio_url, settings.api_key(), allow_hosts=settings.allow_hosts,
                   limits=ImageLimits(download_timeout=settings.download_timeout),
                   max_downloads=settings.max_downloads)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LabelStudioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- images ----------------------------------------------------------------------------------

    async def image_bytes(self, ref: str, task_id: int | None = None) -> bytes:
        """The bytes of the task image ``ref`` (``data:`` URIs decoded), or :class:`ImageError` saying why not.

        They are not decoded here: the caller hands them to the core loader (the host does), which checks them.
        """
        if ref[:5].lower() == "data:":
            from blip2plugins.default_sources import load_data_uri

            return load_data_uri(ref, self.limits)
        url, ours = self.resolve(ref, task_id)
        where, seconds = describe_url(url), self.limits.download_timeout
        cached = self._cache.get(url)
        if cached is not None and cached.immutable:
            return cached.data
        async with self._slots:
            try:
                with anyio.fail_after(seconds):
                    response = await self._get(url, ours, "image/*, */*;q=0.5", cached.validators() if cached else {})
                    try:
                        if response.status_code == 304 and cached is not None:
                            return cached.data
                        if not response.is_success:
                            self._cache.drop(url)
                            raise ImageError(where, f"HTTP {response.status_code}{_hint(response.status_code, ours)}")
                        data = await _read(response, where, self.limits.max_bytes)
                        self._cache.put(url, response.headers, data, immutable=ours and self._uploaded(url))
                        return data
                    finally:
                        await response.aclose()
            except TimeoutError:
                raise ImageError(where, f"timed out (the download took longer than {seconds:g} s)") from None
            except _NETWORK_ERRORS as exc:
                raise ImageError(where, _network_reason(exc)) from None

    @staticmethod
    def per_task(ref: str) -> bool:
        """Whether fetching ``ref`` depends on its task (a cloud storage URI, resolved through the task)."""
        scheme, _, _ = ref.partition(":")
        return scheme.lower() in CLOUD_SCHEMES

    def resolve(self, ref: str, task_id: int | None = None) -> tuple[str, bool]:
        """The URL to fetch for an image reference, and whether it is Label Studio's (sent with credentials)."""
        parts = _split(ref)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if not is_id(task_id, low=0):
                raise ImageError(describe_url(ref), "a cloud storage URI needs its task id (an integer >= 0) to be resolved")
            encoded = base64.urlsafe_b64encode(ref.encode()).decode()
            return self._on_label_studio(f"/tasks/{task_id}/resolve/?fileuri={encoded}", ref), True
        if scheme in ("http", "https"):
            return ref, self._ours(parts, ref)
        if not scheme and not parts.netloc and ref.startswith("/"):
            return self._on_label_studio(ref, ref), True
        raise ImageError(describe_url(ref), "unsupported image reference (expected a Label Studio path, "
                                            "an http(s) URL, a data: URI or a cloud storage URI)")

    def _ours(self, parts: urllib.parse.SplitResult, url: str) -> bool:
        """True for a URL on Label Studio, False for an allow-listed host; :class:`ImageError` for others."""
        if self._origin is not None and _same_origin(_origin(parts), self._origin):
            return True
        host = (parts.hostname or "").lower()
        port_host = f"{host}:{parts.port}" if parts.port else host
        if "*" in self._allow or host in self._allow or port_host in self._allow:
            return False
        raise ImageError(describe_url(url), f"refused: {host or 'no host'} is neither Label Studio's host "
                                            "(LABEL_STUDIO_URL) nor allow-listed (--allow-host)")

    def _uploaded(self, url: str) -> bool:
        """Whether ``url`` is a file uploaded to Label Studio (``/data/upload/<project>/<random prefix>-<name>``):
        such a file is never rewritten, so a copy stays good."""
        parts = urllib.parse.urlsplit(url)
        return parts.path.startswith(self._uploads) and not parts.query and ".." not in parts.path

    def _on_label_studio(self, path: str, ref: str) -> str:
        if self.url is None:
            raise ImageError(describe_url(ref), "LABEL_STUDIO_URL is not set, so Label Studio's files cannot be fetched")
        return self.url + path

    # -- the API ---------------------------------------------------------------------------------

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """``GET`` a Label Studio API path with credentials; :class:`LabelStudioError` on failure."""
        return await self._api("GET", path, params)

    async def post_json(self, path: str, params: dict[str, Any] | None = None, body: Any = None,
                        timeout: float | None = None) -> Any:
        """``POST`` JSON to a Label Studio API path with credentials; :class:`LabelStudioError` on failure."""
        return await self._api("POST", path, params, body, timeout)

    async def _api(self, method: str, path: str, params: dict[str, Any] | None, body: Any = None,
                   timeout: float | None = None) -> Any:
        if self.url is None:
            raise LabelStudioError("LABEL_STUDIO_URL is not set, so Label Studio's API cannot be reached")
        url, what = self.url + path, f"{method} {path}"
        try:
            if method == "GET":
                response = await self._get(url, True, "application/json", params=params)
            else:
                response = await self._send(url, True, {"Accept": "application/json"}, params, method, body, timeout)
            try:
                if not response.is_success:
                    raise LabelStudioError(f"Label Studio answered HTTP {response.status_code} to {what}"
                                           f"{_hint(response.status_code, True)}")
                raw = await _read(response, describe_url(url), MAX_FILE_BYTES)
            finally:
                await response.aclose()
        except ImageError as exc:
            raise LabelStudioError(f"{what}: {exc}") from None
        except _NETWORK_ERRORS as exc:
            raise LabelStudioError(f"{what}: {_network_reason(exc)}") from None
        try:
            return _json(raw, response) if raw.strip() else None
        except ValueError as exc:
            raise LabelStudioError(f"{what}: {exc}") from None

    async def check_access(self, project_id: int | str) -> None:
        """Whether the backend's credentials reach the project: :class:`LabelStudioError` saying why not
        (nothing to check without ``LABEL_STUDIO_URL``: then only data URIs and allow-listed hosts are used)."""
        if self.url is None:
            return
        if not self._key:
            raise LabelStudioError("LABEL_STUDIO_API_KEY is not set: the backend cannot fetch task images from "
                                   "Label Studio (give it a personal access token: Account & Settings)")
        await self.get_json(f"/api/projects/{project_id}", {"fields": "id"})

    async def unlabeled_task_ids(self, project_id: int | str) -> list[int]:
        """The ids of the project's tasks that have no annotation (cancelled ones count as none)."""
        found: list[int] = []
        seen, page = 0, 1
        while True:
            answer = await self.get_json("/api/tasks", {"project": project_id, "page": page, "page_size": _PAGE,
                                                       "fields": "task_only"})
            tasks = answer.get("tasks") if isinstance(answer, dict) else None
            if not isinstance(tasks, list):
                raise LabelStudioError(f"the task list of project {project_id} is {shape(answer)}, not tasks")
            found += [t["id"] for t in tasks if isinstance(t, dict) and is_id(t.get("id"), low=0)
                      and t.get("total_annotations") == 0]
            seen, page = seen + len(tasks), page + 1
            total = answer.get("total")
            if len(tasks) < _PAGE or not isinstance(total, int) or seen >= total:  # past the end is a 404
                return found

    async def retrieve_predictions(self, project_id: int | str, task_ids: list[int], timeout: float = 600.0) -> None:
        """Label Studio's *Retrieve predictions* (a Data Manager action) on ``task_ids``: it asks the backend's
        ``/predict`` for them and stores what comes back."""
        await self.post_json("/api/dm/actions", {"id": "retrieve_tasks_predictions", "project": project_id},
                             {"selectedItems": {"all": False, "included": task_ids}}, timeout)

    async def labeled_tasks(self, project_id: int | str) -> list[Any]:
        """Every task of the project that has annotations, with them (the JSON export)."""
        tasks = await self.get_json(f"/api/projects/{project_id}/export",
                                    {"exportType": "JSON", "download_all_tasks": "false"})
        if not isinstance(tasks, list):
            raise LabelStudioError(f"the export of project {project_id} is {shape(tasks)}, not a list of tasks")
        return tasks

    # -- transport and credentials ----------------------------------------------------------------

    async def _get(self, url: str, ours: bool, accept: str, extra: dict[str, str] | None = None,
                   params: dict[str, Any] | None = None) -> httpx2.Response:
        """``GET url`` (streamed; ``extra`` headers on the first hop), following redirects whose targets may be
        fetched; credentials go to Label Studio only, and only while every hop so far was Label Studio's."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(url, ours, {"Accept": accept, **(extra or {})}, params)
            location = response.headers.get("Location") if response.is_redirect else None
            if location is None:
                return response
            await response.aclose()
            try:
                target = _joined(url, location)
                parts = _split(target)
                if parts.scheme.lower() not in ("http", "https"):
                    raise ImageError(describe_url(target), "not an http(s) URL")
                ours = self._ours(parts, target) and ours
            except ImageError as exc:
                raise ImageError(describe_url(url), f"redirected to {exc}") from None
            url, params, extra = target, None, None
        raise ImageError(describe_url(url), f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, url: str, ours: bool, headers: dict[str, str], params: dict[str, Any] | None,
                    method: str = "GET", body: Any = None, timeout: float | None = None) -> httpx2.Response:
        """One request; Label Studio's get credentials, renewed once on a 401."""
        for attempt in (0, 1):
            sent = {**headers, **(await self._credentials(renew=attempt == 1) if ours else {})}
            try:
                request = self._http.build_request(method, url, headers=sent, params=params, json=body,
                                                   timeout=timeout if timeout is not None else httpx2.USE_CLIENT_DEFAULT)
                response = await self._http.send(request, stream=True)
            except _NETWORK_ERRORS as exc:
                raise ImageError(describe_url(url), _network_reason(exc)) from None
            if response.status_code == 401 and ours and self._personal and attempt == 0:
                await response.aclose()
                continue
            return response
        raise AssertionError("unreachable")

    async def _credentials(self, *, renew: bool = False) -> dict[str, str]:
        if not self._key:
            return {}
        if not self._personal:
            return {"Authorization": f"Token {self._key}"}
        return {"Authorization": f"Bearer {await self._access_token(renew)}"}

    async def _access_token(self, renew: bool) -> str:
        async with self._lock:
            if self._access is not None and not renew and time.time() < self._access[1]:
                return self._access[0]
            if self._refusal is not None and time.monotonic() < self._refusal[1]:
                refusal = self._refusal[0]
                raise ImageError(refusal.source, refusal.reason)
            try:
                access = await self._refresh()
            except ImageError as exc:
                self._refusal = (exc, time.monotonic() + _RETRY_AFTER)
                raise
            self._refusal = None
            expires = _jwt_part(access, 1).get("exp")
            deadline = float(expires) - _EARLY if isinstance(expires, (int, float)) else time.time() + 240.0
            self._access = (access, deadline)
            return access

    async def _refresh(self) -> str:
        """A new access token for the personal access token; :class:`ImageError` saying why not."""
        assert self.url is not None and self._key
        url = self.url + _REFRESH_PATH
        where = describe_url(url)
        try:
            request = self._http.build_request("POST", url, json={"refresh": self._key})
            response = await self._http.send(request, stream=True)
            try:
                body = await _read(response, where, _SMALL_ANSWER)
            finally:
                await response.aclose()
        except _NETWORK_ERRORS as exc:
            raise ImageError(where, f"cannot renew the access token: {_network_reason(exc)}") from None
        if not response.is_success:
            raise ImageError(where, f"Label Studio refused to renew the access token from LABEL_STUDIO_API_KEY "
                                    f"(HTTP {response.status_code}): is the personal access token valid?")
        try:
            data = _json(body, response)
        except ValueError as exc:
            raise ImageError(where, f"cannot renew the access token: {exc}") from None
        access = data.get("access") if isinstance(data, dict) else None
        if not isinstance(access, str) or not access:
            raise ImageError(where, f"cannot renew the access token: Label Studio answered {shape(data)} "
                                    "without an 'access' token")
        return access


def shape(value: Any) -> str:
    """What a JSON value is, for an error line: ``a JSON object (keys: detail) saying '...'``, ``a JSON list``."""
    if isinstance(value, dict):
        keys = ", ".join(str(k)[:40] for k in list(value)[:5]) or "none"
        detail = value.get("detail")
        said = f" saying {detail[:120]!r}" if isinstance(detail, str) else ""
        return f"a JSON object (keys: {keys}){said}"
    names = {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean", type(None): "JSON null"}
    return names.get(type(value), "a JSON number")


def _json(body: bytes, response: httpx2.Response) -> Any:
    """The JSON of an answer; ``ValueError`` naming what Label Studio answered instead."""
    try:
        return loads(body)
    except JSONReadError as exc:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0].strip()[:60]
        raise ValueError(f"Label Studio answered {len(body):,} bytes of {kind}, not usable JSON ({exc})") from None


async def _read(response: httpx2.Response, where: str, cap: int) -> bytes:
    """The body of a streamed answer, refused past ``cap`` bytes."""
    length = response.headers.get("Content-Length", "").strip()
    if length.isascii() and length.isdigit() and (len(length) > 15 or int(length) > cap):
        raise ImageError(where, f"too large ({length[:20]} bytes > limit {cap})")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise ImageError(where, f"too large (over the limit of {cap} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _joined(url: str, location: str) -> str:
    """A redirect's target; :class:`ImageError` for a ``Location`` that is no URL."""
    try:
        return urllib.parse.urljoin(url, location)
    except ValueError as exc:
        raise ImageError(describe_url(location), f"invalid URL ({exc})") from None


def _split(url: str) -> urllib.parse.SplitResult:
    """``urlsplit``, its port checked; :class:`ImageError` for a URL that cannot be one (a bad port, ``[``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError as exc:
        raise ImageError(describe_url(url), f"invalid URL ({exc})") from None
    return parts


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _same_origin(a: tuple[str, str, int | None], b: tuple[str, str, int | None]) -> bool:
    """Equal origins, the loopback spellings (localhost, 127.0.0.1, ::1) counting as one host."""
    return a == b or (a[0] == b[0] and a[2] == b[2] and a[1] in _LOOPBACK and b[1] in _LOOPBACK)


def _jwt_part(token: str, index: int) -> dict[str, Any]:
    """The decoded JSON of one part of a JWT (not verified: the server does that), or ``{}``."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return {}
    try:
        data = loads(base64.urlsafe_b64decode(pieces[index] + "=" * (-len(pieces[index]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _hint(status: int, ours: bool) -> str:
    if ours and status in (401, 403):
        return (" (check LABEL_STUDIO_API_KEY: a personal access token, or a legacy token where the organisation "
                "allows them)")
    return ""


def _network_reason(exc: Exception) -> str:
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx2.InvalidURL):
        return "invalid URL"
    if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.DecodingError)):
        return f"a malformed answer ({type(exc).__name__})"
    return f"unreachable ({type(exc).__name__})"
