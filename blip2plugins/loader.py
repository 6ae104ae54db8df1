"""The loader pool: images read and prepared on a few threads, chunk by chunk, the next chunk loading
while the worker runs this one. Pillow releases the GIL while it decodes and resizes, so the threads
run in parallel."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import Blip2Error

T = TypeVar("T")
R = TypeVar("R")


class Loader:
    """``threads`` threads preparing items for the host."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, "blip2-load")

    def map(self, prepare: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``prepare`` of each item, on the threads, in order."""
        return self._pool.map(prepare, items)

    def prefetched(self, items: Iterable[T], prepare: Callable[[T], R], size: int,
                   check_open: Callable[[], None]) -> Iterator[tuple[list[T], list[R], list[float]]]:
        """``(chunk, prepared, seconds)`` for each chunk of ``size`` items, prepared on the threads (even a
        single image: a burst of callers decodes at most ``threads`` images at once); ``seconds`` is how
        long each item took to prepare. The next chunk is already loading while the caller handles this
        one. ``check_open`` raises when the host closed."""
        ahead: tuple[list[T], list[Future[list[tuple[R, float]]]]] | None = None
        for chunk in chunks(items, size):
            check_open()
            shares = min(self.threads, len(chunk))  # one task per thread: fewer hand-offs than per item
            try:
                loading = chunk, [self._pool.submit(_prepare_each, prepare, chunk[i::shares]) for i in range(shares)]
            except RuntimeError:  # close() shut the pool down after our check
                raise Blip2Error("the host is closed") from None
            if ahead is not None:
                yield _unpacked(*ahead)
            ahead = loading
        if ahead is not None:
            yield _unpacked(*ahead)

    def shutdown(self) -> None:
        self._pool.shutdown()


def in_order(queued: Iterator[list[T]], finish: Callable[[list[T]], list[R]]) -> Iterator[R]:
    """The finished items of queued chunks, in order. Chunk k is finished (waited for) only once
    chunk k+1 is queued, so the worker always has the next chunk; with the chunk loading after
    that (:meth:`Loader.prefetched`), at most three chunks are held."""
    ahead: deque[list[T]] = deque()
    for chunk in queued:
        ahead.append(chunk)
        if len(ahead) == 2:
            yield from finish(ahead.popleft())
    for chunk in ahead:
        yield from finish(chunk)


def _prepare_each(prepare: Callable[[T], R], items: list[T]) -> list[tuple[R, float]]:
    """What preparing each item gave, and how long it took."""
    done = []
    for item in items:
        started = time.perf_counter()
        done.append((prepare(item), time.perf_counter() - started))
    return done


def _unpacked(chunk: list[T], loading: list[Future[list[tuple[R, float]]]]) -> tuple[list[T], list[R], list[float]]:
    """A prefetched chunk once loaded (share ``i`` held items ``i, i + shares, ...``): its items,
    what preparing each gave, and how long each took."""
    shares = [future.result() for future in loading]
    done = [shares[i % len(shares)][i // len(shares)] for i in range(len(chunk))]
    return chunk, [outcome for outcome, _ in done], [seconds for _, seconds in done]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), read as they are needed."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def raise_first_error(prepared: list[Any]) -> None:
    """Raise the error of the first item that failed to load (calls that report a bad image as its
    own exception rather than as a failed result)."""
    for outcome in prepared:
        if isinstance(outcome, Blip2Error):
            raise outcome
