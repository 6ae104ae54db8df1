"""The backend's Label Studio client: which URLs it fetches, with which credentials, within which limits."""

from __future__ import annotations

import base64

import anyio
import httpx2
import pytest

from blip2plugins.demo import world
from blip2plugins.errors import ImageError
from blip2plugins.images import load_image
from blip2plugins.types import ImageLimits
from blip2plugins_label_studio.client import LabelStudioClient, describe_url, is_personal_token
from blip2plugins_label_studio.errors import LabelStudioError

from ls_fake import FakeLabelStudio, make_jwt
from ls_payloads import LABEL_STUDIO_URL, SECRETS, png

PNG = png(world.make_scene({"circle": "red"}))


def client_for(fake: FakeLabelStudio, **kwargs) -> LabelStudioClient:
    return LabelStudioClient(LABEL_STUDIO_URL, fake.key, transport=httpx2.MockTransport(fake.handler), **kwargs)


def fetch(client: LabelStudioClient, ref: str, task_id: int | None = None) -> bytes:
    return anyio.run(client.image_bytes, ref, task_id)


def test_references_resolve_to_label_studio_or_are_refused() -> None:
    client = LabelStudioClient(LABEL_STUDIO_URL, SECRETS[2], allow_hosts=("cdn.example.org:8443",))
    assert client.resolve("/data/upload/1/a.png") == (f"{LABEL_STUDIO_URL}/data/upload/1/a.png", True)
    assert client.resolve(f"{LABEL_STUDIO_URL}/data/local-files/?d=a.png")[1] is True
    url, ours = client.resolve("s3://bucket/key with space.png", 7)
    encoded = base64.urlsafe_b64encode(b"s3://bucket/key with space.png").decode()
    assert (url, ours) == (f"{LABEL_STUDIO_URL}/tasks/7/resolve/?fileuri={encoded}", True)
    assert client.resolve("https://cdn.example.org:8443/x.png") == ("https://cdn.example.org:8443/x.png", False)
    for ref in ("http://label-studio.test:9999/data/x.png", "https://cdn.example.org/x.png", "http://localhost/admin",
                "file:///etc/passwd", "relative.png", "ftp://label-studio.test/x.png"):
        with pytest.raises(ImageError):
            client.resolve(ref)
    with pytest.raises(ImageError, match="task id"):
        client.resolve("gs://bucket/x.png")
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL is not set"):
        LabelStudioClient(None, None).resolve("/data/upload/1/a.png")


def test_images_come_with_credentials_and_within_the_limits() -> None:
    fake = FakeLabelStudio(SECRETS[2])
    fake.files["/data/upload/1/a.png"] = PNG
    assert load_image(fetch(client_for(fake), "/data/upload/1/a.png")).size == (world.CANVAS, world.CANVAS)
    with pytest.raises(ImageError, match="too large"):
        fetch(client_for(fake, limits=ImageLimits(max_bytes=100)), "/data/upload/1/a.png")
    with pytest.raises(ImageError, match="HTTP 401.*LABEL_STUDIO_API_KEY"):
        fetch(LabelStudioClient(LABEL_STUDIO_URL, "wrong", transport=httpx2.MockTransport(fake.handler)),
              "/data/upload/1/a.png")
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert fetch(client_for(fake), data_uri) == PNG


def test_a_personal_token_is_renewed_when_label_studio_refuses_the_access_token() -> None:
    pat = make_jwt("refresh", lifetime=3600)
    fake = FakeLabelStudio(pat)
    fake.files["/data/upload/1/a.png"] = fake.files["/data/upload/1/b.png"] = PNG
    client = client_for(fake)
    fetch(client, "/data/upload/1/a.png")
    fake.issued.clear()  # Label Studio forgets the access token (expired, or restarted)
    fetch(client, "/data/upload/1/b.png")
    assert [path for _, path, _ in fake.seen].count("/api/token/refresh/") == 2
    with pytest.raises(ImageError, match="refused to renew"):
        fetch(LabelStudioClient(LABEL_STUDIO_URL, make_jwt("refresh"), transport=httpx2.MockTransport(fake.handler)),
              "/data/upload/1/a.png")


def test_allow_listed_hosts_may_not_redirect_elsewhere() -> None:
    def redirecting(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})

    client = LabelStudioClient(LABEL_STUDIO_URL, None, allow_hosts=("cdn.example.org",),
                               transport=httpx2.MockTransport(redirecting))
    with pytest.raises(ImageError, match="redirected to http://169.254.169.254/latest/meta-data: refused"):
        fetch(client, "https://cdn.example.org/x.png")


def test_the_export_needs_label_studio() -> None:
    fake = FakeLabelStudio(SECRETS[2])
    fake.export = [{"id": 1}]
    assert anyio.run(client_for(fake).labeled_tasks, 1) == [{"id": 1}]
    with pytest.raises(LabelStudioError, match="HTTP 401"):
        anyio.run(LabelStudioClient(LABEL_STUDIO_URL, "wrong", transport=httpx2.MockTransport(fake.handler)).labeled_tasks, 1)


def test_keys_and_urls_as_they_appear_in_logs() -> None:
    assert is_personal_token(make_jwt("refresh")) and not is_personal_token(SECRETS[2])
    assert describe_url(f"https://user:{SECRETS[1]}@s3.example.org/b/k.png?X-Amz-Signature={SECRETS[0]}") == \
        "https://s3.example.org/b/k.png?..."
