"""A bounded cache of downloaded task images, keyed by URL (least recently used first out, within a byte budget).

An image answered with an ``ETag`` or ``Last-Modified`` is kept; the next download of that URL asks
``If-None-Match`` / ``If-Modified-Since`` and a ``304 Not Modified`` reuses the kept bytes. An image the
caller knows cannot change (``immutable``: a file uploaded to Label Studio, whose name carries a random
prefix given at upload and is never rewritten) is reused without asking.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Cached:
    data: bytes
    etag: str | None
    modified: str | None
    immutable: bool = False

    def validators(self) -> dict[str, str]:
        """The conditional request headers that revalidate this copy."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.modified:
            headers["If-Modified-Since"] = self.modified
        return headers


class ImageCache:
    """At most ``max_bytes`` of images (one image over a quarter of it is not kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Cached] = OrderedDict()
        self._size = 0

    def get(self, url: str) -> Cached | None:
        item = self._items.get(url)
        if item is not None:
            self._items.move_to_end(url)
        return item

    def put(self, url: str, headers: Mapping[str, str], data: bytes, *, immutable: bool = False) -> None:
        """Keep ``data`` when it is ``immutable`` or the answer's ``headers`` allow revalidating it, else forget ``url``."""
        self.drop(url)
        etag, modified = headers.get("ETag"), headers.get("Last-Modified")
        if not (immutable or etag or modified) or len(data) > self.max_bytes // 4 \
                or "no-store" in headers.get("Cache-Control", ""):
            return
        self._items[url] = Cached(data, etag, modified, immutable)
        self._size += len(data)
        while self._size > self.max_bytes:
            _, oldest = self._items.popitem(last=False)
            self._size -= len(oldest.data)

    def drop(self, url: str) -> None:
        item = self._items.pop(url, None)
        if item is not None:
            self._size -= len(item.data)

    def __len__(self) -> int:
        return len(self._items)
