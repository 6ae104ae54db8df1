"""Shared hosts and encoded images: what every ChatBlip2 and tool of one process has in common.

Instances that name the same ``(model, adapter, device, dtype, quantize)`` share one loaded
:class:`~blip2plugins.host.Host`, loaded on first use (never in a constructor). Each host keeps the
encodings of the images it has seen (a bounded cache keyed by the image's content hash), so an image
is encoded once however many turns, tools or instances ask about it.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from blip2plugins.errors import ImageError
from blip2plugins.host import Host
from blip2plugins.images import describe

#: Encoded images kept per host (least recently used dropped first).
IMAGE_CACHE_SIZE = 64

_hosts: dict[tuple[Any, ...], Host] = {}
_hosts_lock = threading.Lock()


class HostSettings(BaseModel):
    """Which model to serve: a preset name, checkpoint folder or hub id, and how to load it.

    ``host`` takes an already loaded :class:`Host` instead (then the other fields are not used).
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True, extra="ignore")

    model_name: str = Field(default="demo", alias="model")
    """Preset name, checkpoint folder or hub id (alias ``model``)."""
    adapter: str | None = None
    """A PEFT (LoRA) adapter folder applied to the model."""
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None
    """``"8bit"`` or ``"4bit"`` (needs bitsandbytes)."""
    host: Host | None = Field(default=None, exclude=True)
    """An already loaded host to use instead of loading ``model``."""

    def get_host(self, model: str | None = None) -> Host:
        """The host serving this instance (``model`` overrides the model name), loaded on first use."""
        if self.host is not None and model in (None, self.model_name):
            return self.host
        return shared_host(model or self.model_name, self.adapter, self.device, self.dtype, self.quantize)


def shared_host(model: str, adapter: str | None, device: str, dtype: str, quantize: str | None) -> Host:
    """The process-wide host for these settings, loaded the first time they are asked for."""
    key = (model, adapter, device, dtype, quantize)
    with _hosts_lock:
        host = _hosts.get(key)
        if host is None:
            host = _hosts[key] = Host.load(model, adapter=adapter, device=device, dtype=dtype, quantize=quantize)
        return host


@atexit.register
def close_shared_hosts() -> None:
    """Stop every shared host's worker (at exit, so no thread outlives the interpreter)."""
    with _hosts_lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.close()


@dataclass(frozen=True)
class ImageRef:
    """An image to load: ``source`` is what the host's image loader takes, ``key`` its content hash.

    ``label`` names it in errors (e.g. ``"message 2, content block 1"``).
    """

    source: Any
    key: str
    label: str

    @classmethod
    def from_block(cls, block: dict[str, Any], label: str) -> ImageRef:
        """An image from a standard LangChain image content block (``base64`` or ``url``)."""
        if block.get("base64"):
            try:
                data = base64.b64decode(block["base64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise ImageError(label, "the base64 image data is not valid base64") from None
            return cls(data, hashlib.sha256(data).hexdigest(), label)
        if block.get("url"):
            return cls.from_string(str(block["url"]), f"{label} ({describe(block['url'])})")
        if block.get("file_id"):
            raise ImageError(label, "images given by file_id are not supported: pass base64 data or a url")
        raise ImageError(label, "an image block needs base64 data or a url")

    @classmethod
    def from_string(cls, ref: str, label: str | None = None) -> ImageRef:
        """A local path, ``http(s)``/``file`` URL, ``data:`` URI or any string an image-source plugin claims.

        URLs are keyed by the URL (fetched once per cache lifetime); local files by path, size and mtime.
        """
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(label or describe(ref), "an image reference must be a non-empty string")
        identity = ref
        if os.path.isfile(ref):
            stat = os.stat(ref)
            identity = f"{os.path.abspath(ref)}\0{stat.st_size}\0{stat.st_mtime_ns}"
        return cls(ref, hashlib.sha256(identity.encode()).hexdigest(), label or describe(ref))


class _Encodings:
    """One host's encoded images by key: least recently used first out; concurrent asks share one encoding."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict[str, Future[torch.Tensor]] = OrderedDict()


_encodings: weakref.WeakKeyDictionary[Host, _Encodings] = weakref.WeakKeyDictionary()
_encodings_lock = threading.Lock()


def encode_image(host: Host, image: ImageRef) -> torch.Tensor:
    """The host's encoding of ``image``, computed once while it stays in the host's cache.

    A bad image raises :class:`ImageError` naming ``image.label``.
    """
    with _encodings_lock:
        cache = _encodings.setdefault(host, _Encodings(IMAGE_CACHE_SIZE))
    with cache.lock:
        future = cache.items.get(image.key)
        owner = future is None
        if owner:
            future = cache.items[image.key] = Future()
            while len(cache.items) > cache.size:
                cache.items.popitem(last=False)
        else:
            cache.items.move_to_end(image.key)
    assert future is not None
    if owner:
        try:
            future.set_result(host.encode(image.source))
        except ImageError as exc:
            with cache.lock:
                cache.items.pop(image.key, None)
            future.set_exception(ImageError(image.label, exc.reason))
        except BaseException as exc:
            with cache.lock:
                cache.items.pop(image.key, None)
            future.set_exception(exc)
    return future.result()
