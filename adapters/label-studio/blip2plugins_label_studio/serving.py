"""The model behind the backend: loaded in the background, serving each project's current adapter.

Every project has its own line of adapters in the adapter store (``project-<id>``). The version
served for a project is the store's current one, read afresh (two small files) whenever it matters,
so every process sharing the store follows promotions, rollbacks (``blip2 adapters rollback``) and
restarts. The host holds one adapter at a time: requests for the same adapter run together, and a
request for another one waits until they are done, then swaps (between host batches). Requests take
turns in arrival order: once one waits for a swap, later requests for the adapter now served wait
too, so a busy project cannot keep the others waiting.

Model versions, as Label Studio sees them: ``<model>`` for the base model and
``<model>+project-<id>@v0003`` for an adapter version (``<model>``: the preset's name, the checkpoint
folder's name, or the last part of a hub id). They are known without loading the model, so
``/setup`` answers at once and its version always equals the one on the predictions.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from blip2plugins.errors import Blip2Error, StoreError
from blip2plugins.store import AdapterStore
from blip2plugins.types import AdapterVersion

from .settings import Settings

if TYPE_CHECKING:
    from blip2plugins.host import Host

log = logging.getLogger(__name__)
# transformers' from_pretrained sets process-wide state (the default device): one load at a time.
_LOAD_LOCK = threading.Lock()


def adapter_name(project: str) -> str:
    """The adapter store name of a project's adapters."""
    return f"project-{project}"


def base_model_name(model: str) -> str:
    """The name the adapter store files ``model``'s adapters under (as the core names a loaded model),
    found without loading it: a preset's name, a checkpoint folder's name, else the hub id."""
    from blip2plugins.errors import ModelLoadError
    from blip2plugins.presets import resolve

    try:
        return resolve(model).name
    except ModelLoadError:  # loading it will say why
        return model


class Serving:
    """One host for the process and the adapter it serves, shared by every request thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = AdapterStore(settings.adapter_store)
        self.base_model = base_model_name(settings.model)
        self.loaded: Future[Host] = Future()
        self.load_seconds: float | None = None
        self._cond = threading.Condition()
        self._adapter: str | None = None  # the folder attached now (None: the base model)
        self._active = 0
        self._waiting: dict[int, str | None] = {}  # ticket -> adapter folder, in arrival order
        self._tickets = 0
        self._thread = threading.Thread(target=self._load, name="blip2-ls-load", daemon=True)

    # -- loading ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading the model in the background."""
        self._thread.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            from transformers.utils import logging as transformers_logging

            from blip2plugins.host import Host

            transformers_logging.disable_progress_bar()
            s = self.settings
            with _LOAD_LOCK:
                host = Host.load(s.model, device=s.device, dtype=s.dtype, quantize=s.quantize,
                                 max_batch_size=s.max_batch_size, fast_preprocess=s.fast_preprocess,
                                 batch_invariant=s.batch_invariant)
        except Exception as exc:  # reported by /health; the process keeps answering
            log.error("the model %r failed to load: %s", self.settings.model, exc)
            self.loaded.set_exception(exc if isinstance(exc, Blip2Error) else Blip2Error(f"model load failed: {exc}"))
            return
        self.load_seconds = time.perf_counter() - started
        if host.name != self.base_model:
            log.warning("model %r is named %r once loaded (expected %r)", s.model, host.name, self.base_model)
            self.base_model = host.name
        log.info("model %s loaded in %.1f s", host.model_version, self.load_seconds)
        self.loaded.set_result(host)

    @property
    def state(self) -> str:
        """``"loading"``, ``"ready"`` or ``"failed"``."""
        if not self.loaded.done():
            return "loading"
        return "failed" if self.loaded.exception() is not None else "ready"

    @property
    def error(self) -> str | None:
        return str(self.loaded.exception()) if self.state == "failed" else None

    def close(self, timeout: float = 60.0) -> None:
        """Stop the host, after a load in progress (at most ``timeout`` seconds: loads cannot be interrupted)."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.loaded.done() and self.loaded.exception() is None:
            self.loaded.result().close()

    # -- versions --------------------------------------------------------------------------------

    def current(self, project: str) -> AdapterVersion | None:
        """The project's current adapter version in the store, or None (the base model serves)."""
        try:
            return self.store.current(self.base_model, adapter_name(project))
        except StoreError as exc:
            log.error("project %s: cannot read the adapter store, serving the base model: %s", project, exc)
            return None

    def model_version(self, project: str) -> str:
        """The model version Label Studio sees for ``project`` now."""
        return self.version_of(self.current(project))

    def version_of(self, adapter: AdapterVersion | None) -> str:
        label = self.base_model.rstrip("/").rsplit("/", 1)[-1]  # a hub id's last part: blip2-opt-2.7b
        return label if adapter is None else f"{label}+{adapter.name}@{adapter.version}"

    # -- serving ---------------------------------------------------------------------------------

    @contextmanager
    def serving(self, project: str) -> Iterator[tuple[Host, str]]:
        """The loaded host, serving ``project``'s current version until the block ends, and that version.

        Blocks while requests on another adapter run, and while earlier requests wait for another one.
        """
        host = self.loaded.result()
        adapter = self.current(project)
        wanted = adapter.path if adapter is not None else None
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            self._waiting[ticket] = wanted
            try:
                self._cond.wait_for(lambda: self._may_start(ticket, wanted))
            finally:
                del self._waiting[ticket]
            if self._adapter != wanted:
                try:
                    host.use_adapter(wanted)
                except Blip2Error as exc:  # the previous adapter still serves: say so in the version
                    log.error("project %s: cannot serve %s (%s); still serving the previous one",
                              project, self.version_of(adapter), exc)
                    adapter = self._attached_version()
                else:
                    log.info("project %s: now serving %s", project, self.version_of(adapter))
                    self._adapter = wanted
            self._active += 1
            self._cond.notify_all()  # later requests for this adapter may start too
        try:
            yield host, self.version_of(adapter)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _may_start(self, ticket: int, wanted: str | None) -> bool:
        earlier = [folder for waiting, folder in self._waiting.items() if waiting < ticket]
        if wanted == self._adapter:  # join the requests running, unless someone before us waits for a swap
            return all(folder == wanted for folder in earlier)
        return not self._active and not earlier  # swap: first in line, once the running requests are done

    def _attached_version(self) -> AdapterVersion | None:
        if self._adapter is None:
            return None
        folder = Path(self._adapter)
        try:
            return self.store.get(self.base_model, folder.parent.name, folder.name)
        except StoreError:
            return None
