"""Fixtures of the Label Studio backend tests: the backend app under Starlette's test client, with a
fake Label Studio (``ls_fake``) behind its HTTP client; or served by uvicorn on 127.0.0.1 (``ls_servers``).

Skipped unless the adapter is installed (``pip install -e 'adapters/label-studio[test]'``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Iterator

import pytest

if importlib.util.find_spec("blip2plugins_label_studio") is None or importlib.util.find_spec("httpx") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    import httpx2
    from starlette.testclient import TestClient

    from blip2plugins_label_studio.client import LabelStudioClient
    from blip2plugins_label_studio.settings import Settings

    from ls_fake import FakeLabelStudio
    from ls_payloads import LABEL_STUDIO_URL, SECRETS
    from ls_servers import LiveBackend


@pytest.fixture
def make_backend(tmp_path, monkeypatch) -> Iterator[Callable[..., tuple[Any, FakeLabelStudio]]]:
    """``make(key=..., **settings)`` -> (test client of a started backend app, its fake Label Studio)."""
    clients: list[TestClient] = []
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)

    def make(*, key: str = SECRETS[2], **overrides: Any) -> tuple[TestClient, FakeLabelStudio]:
        from blip2plugins_label_studio.app import create_app

        fake = FakeLabelStudio(key)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
        options = {"model": "demo", "model_dir": str(tmp_path / "model-dir"), "adapter_store": str(tmp_path / "store"),
                   "label_studio_url": LABEL_STUDIO_URL, **overrides}
        client = LabelStudioClient(LABEL_STUDIO_URL, key, allow_hosts=options.get("allow_hosts", ()),
                                   transport=httpx2.MockTransport(fake.handler))
        test_client = TestClient(create_app(Settings(**options), client=client))
        test_client.__enter__()
        clients.append(test_client)
        return test_client, fake

    yield make
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def live_backend(tmp_path, monkeypatch) -> Iterator[Callable[..., LiveBackend]]:
    """``start(key=..., **settings)`` -> a started :class:`LiveBackend` (over HTTP on 127.0.0.1), its own
    Label Studio client built from the settings."""
    started: list[LiveBackend] = []
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)

    def start(*, key: str = SECRETS[2], **overrides: Any) -> LiveBackend:
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
        options = {"model": "demo", "model_dir": str(tmp_path / f"model-dir-{len(started)}"),
                   "adapter_store": str(tmp_path / "store"), **overrides}
        live = LiveBackend(Settings(**options))
        started.append(live)
        return live.start()

    yield start
    for live in started:
        live.stop()
