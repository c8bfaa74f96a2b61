"""The service's lifecycle: start (store, bundle, batcher), hot reload, the reload generation shared by worker
processes, readiness, stop. No HTTP here: the routes (:mod:`.routes`) call this, and a refused reload is a
:class:`ReloadRefused` that :mod:`.errors` answers with 409.

With several worker processes a reload request reaches one of them; that worker then bumps
``ROOT/.reload-generation`` and every other worker, polling it, reloads the same published version. The
worker that ran the request also records its outcome (ok or the error, the versions, the time) in
``ROOT/.reload-outcome.json``, so that every worker's ``/readyz`` reports the last reload, not only the one
that happened to receive it.

A start while ``index/CURRENT`` names a version that does not load (corrupt, half-deleted) serves the newest
published version that does, logs a WARNING naming both, counts it (``twotower_index_fallbacks_total``) and
reports it in ``/readyz`` as ``index_fallback`` until a reload loads CURRENT's version.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from pathlib import Path

from ..errors import StoreConfigError, TwotowerError
from ..index import set_faiss_threads
from .batcher import MicroBatcher
from .bundle import Bundle, IndexFallback, load_bundle, load_serving_bundle
from .engine import Retriever
from .health import open_serving_store
from .histories import histories
from .metrics import Metrics
from .schemas import ReloadResponse
from .settings import ServeSettings

log = logging.getLogger(__name__)

GENERATION_FILE = ".reload-generation"
OUTCOME_FILE = ".reload-outcome.json"


class ReloadRefused(TwotowerError):
    """A reload did not happen (one is running, or the published version cannot be loaded); the current version
    keeps serving. Answered with 409 and this message."""


def _freeze_heap() -> None:
    """Collect what is young, then move everything alive now (~226k tracked objects with a 1M-item bundle,
    mostly imported library code) out of the cyclic GC's reach. A full collection over them takes ~100 ms,
    and CPython runs one whenever enough new objects have survived, stalling every request in flight: that
    was the benchmark's ~230 ms max latency.

    After a reload there is no ``gc.unfreeze()``: the old bundle, though frozen, is freed by reference
    counting once its last request is done (measured: RSS back to before the load, and a full collection
    afterwards found 0 unreachable objects), and unfreezing would cost that ~100 ms stall again. Right after
    a reload this collects only the new bundle's young objects: 0.5 ms on the 1M-item benchmark bundle.
    ``tests/test_serve_head.py`` checks that nothing in a bundle forms a cycle that would keep it alive."""
    gc.collect()
    gc.freeze()


def read_generation(root: Path) -> str:
    """The last announced reload (``ROOT/.reload-generation``), "" when there is none."""
    try:
        return (root / GENERATION_FILE).read_text().strip()
    except OSError:
        return ""


def write_generation(root: Path) -> str:
    """Announce a successful reload to the other worker processes (atomic replace of a small file)."""
    gen = f"{time.time_ns()}-{os.getpid()}"
    tmp = root / f".{GENERATION_FILE}.tmp-{os.getpid()}"
    tmp.write_text(gen + "\n")
    os.replace(tmp, root / GENERATION_FILE)
    return gen


def write_outcome(root: Path, at: float, error: str | None, model_version: str, index_version: str) -> None:
    """Record the last admin reload's outcome for every worker's ``/readyz`` (atomic replace of a small file).
    ``at``: when it ended (epoch seconds); ``error``: None when it succeeded; the versions are the ones served
    after it."""
    outcome = {"result": "error" if error else "ok", "error": error, "model_version": model_version,
               "index_version": index_version, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
               "at_s": at, "pid": os.getpid()}  # fmt: skip
    tmp = root / f".{OUTCOME_FILE}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(outcome) + "\n")
        os.replace(tmp, root / OUTCOME_FILE)
    except OSError as exc:  # the reload's own answer matters more than the other workers' report of it
        log.warning("cannot record the reload outcome in %s (%s); other workers' /readyz will not show it", root, exc)


def read_outcome(root: Path, since: float = 0.0) -> dict | None:
    """The last reload's outcome any worker recorded (:func:`write_outcome`) at or after ``since`` (epoch
    seconds), None when there is none. ``since``: the service's start, so that a restarted service does not
    report a reload of its previous life."""
    try:
        outcome = json.loads((root / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(outcome, dict) or not isinstance(outcome.get("at_s"), (int, float)) or outcome["at_s"] < since:
        return None
    return outcome


class Service:
    """What the routes share: settings, metrics, the retriever (current bundle + store) and the batcher.

    ``bundle``: serve this already-loaded bundle first (tests, benchmarks) instead of loading one at start.
    """

    def __init__(self, settings: ServeSettings, bundle: Bundle | None = None) -> None:
        self.settings, self.metrics = settings, Metrics()
        self._preloaded = bundle
        self.retriever: Retriever | None = None
        self.batcher: MicroBatcher | None = None
        self.reload_lock = asyncio.Lock()
        self.last_reload_error: str | None = None  # this worker's own last reload failure (also when following)
        self._reloaded_at = 0.0  # when this worker's last reload attempt ended (epoch seconds)
        self.index_fallback: IndexFallback | None = None
        self._started = time.time()  # reload outcomes recorded before this are a previous run's
        self._generation = ""
        self._watcher: asyncio.Task | None = None

    async def start(self) -> None:
        """Open the store, load the published bundle, start the micro-batcher and the generation watcher."""
        import torch

        s = self.settings
        torch.set_num_threads(s.torch_threads)
        set_faiss_threads(s.faiss_threads)
        try:  # a missing store or a wrong URL stops the start; a locked or corrupt one degrades (fallback path)
            store = await asyncio.to_thread(open_serving_store, s.resolved_store_url())
        except StoreConfigError as exc:
            log.error("cannot serve: %s", exc)
            raise
        # the store first on purpose: a wrong store URL fails before a large bundle is loaded
        try:
            if self._preloaded is not None:
                bundle, self._preloaded = self._preloaded, None
            else:
                bundle, self.index_fallback = await asyncio.to_thread(
                    load_serving_bundle, s.artifacts, s.hnsw_ef_search, s.trace_head
                )
            retriever = Retriever(bundle, store, self.metrics, retry_s=s.store_retry_s)
            status = await asyncio.to_thread(retriever.check_store)
            await asyncio.to_thread(warm_histories, bundle)
        except BaseException:  # the lifespan never calls stop() after a failed start: close what start opened
            store.close()
            raise
        self.retriever = retriever
        if status == "unavailable":
            log.warning(
                "feature store unavailable (%s); serving the fallback path and retrying every %s s",
                retriever.health.error,
                s.store_retry_s,
            )
        self.batcher = MicroBatcher(retriever.run, s.micro_batch, s.micro_batch_wait_ms / 1000.0)
        _freeze_heap()
        self.metrics.set_versions(bundle.model_version, bundle.index_version)
        if self.index_fallback is not None:
            self.metrics.index_fallbacks.inc()
            log.warning(
                "index/CURRENT names %s, which does not load (%s); serving the newest published version that does, "
                "%s. Fix or roll back the published index (`twotower index rollback`), then POST /admin/reload",
                self.index_fallback.wanted,
                self.index_fallback.error,
                self.index_fallback.serving,
            )
        log.info("serving model %s with index %s from %s", bundle.model_version, bundle.index_version, s.artifacts)
        self._generation = read_generation(s.artifacts)
        if s.reload_poll_s > 0:
            self._watcher = asyncio.create_task(self._watch_generation())

    async def _watch_generation(self) -> None:
        """Reload when another worker announced a reload (a failed one is logged and reported by /readyz)."""
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            gen = await asyncio.to_thread(read_generation, self.settings.artifacts)
            if gen and gen != self._generation and not self.reload_lock.locked():
                self._generation = gen
                try:
                    await self.reload(announce=False)
                except ReloadRefused:
                    pass  # reload() logged it and keeps serving the current version

    async def stop(self) -> None:
        """Stop watching, drain the batcher, close the store, retire this worker's live gauges."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.batcher is not None:
            await self.batcher.close()
        if self.retriever is not None:
            self.retriever.store.close()
        self.metrics.close()

    async def reload(self, announce: bool = True) -> ReloadResponse:
        """Load the published version and swap it in; on any failure keep serving and raise :class:`ReloadRefused`.

        ``announce``: tell the other worker processes (see the module docstring)."""
        t0 = time.perf_counter()
        if self.reload_lock.locked():
            raise ReloadRefused("a reload is already running; retry when it has finished")
        async with self.reload_lock:
            old = self.retriever.bundle
            try:
                s = self.settings
                new = await asyncio.to_thread(load_bundle, s.artifacts, s.hnsw_ef_search, s.trace_head, old)
            except Exception as exc:  # anything unloadable: the current version must keep serving
                self.last_reload_error, self._reloaded_at = f"{type(exc).__name__}: {exc}", time.time()
                self.metrics.reloads.labels("error").inc()
                log.error("reload failed, still serving %s / %s: %s", old.model_version, old.index_version, exc)
                if announce:  # the worker that ran the request tells the others' /readyz
                    await asyncio.to_thread(
                        write_outcome,
                        s.artifacts,
                        self._reloaded_at,
                        self.last_reload_error,
                        old.model_version,
                        old.index_version,
                    )
                raise ReloadRefused(
                    f"reload failed; still serving model {old.model_version} index {old.index_version}. "
                    f"Fix or roll back the published artifacts, then reload again. Cause: {self.last_reload_error}",
                ) from exc
            await asyncio.to_thread(warm_histories, new)
            self.retriever.swap(new)
            await asyncio.to_thread(self.retriever.check_store)  # warns when the store has no state of the new version
            _freeze_heap()  # the old bundle is freed by refcount once its requests in flight are done
            self.last_reload_error, self.index_fallback = None, None  # CURRENT's version loaded
            self._reloaded_at = time.time()
            if announce:
                self._generation = await asyncio.to_thread(write_generation, self.settings.artifacts)
                await asyncio.to_thread(
                    write_outcome, s.artifacts, self._reloaded_at, None, new.model_version, new.index_version
                )
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_versions(new.model_version, new.index_version)
        changed = (new.model_version, new.index_version, _ranker(new)) != (
            old.model_version,
            old.index_version,
            _ranker(old),
        )
        log.info("reloaded: model %s index %s (changed: %s)", new.model_version, new.index_version, changed)
        return ReloadResponse(
            changed=changed,
            model_version=new.model_version,
            index_version=new.index_version,
            previous_model_version=old.model_version,
            previous_index_version=old.index_version,
            ranker_version=_ranker(new),
            previous_ranker_version=_ranker(old),
            took_ms=round(1000 * (time.perf_counter() - t0), 1),
        )

    async def readiness(self) -> dict | None:
        """The ``/readyz`` body, None while the first bundle is loading. ``store``: "ok", "unavailable"
        (requests take the fallback path; ``store_error`` says why) or "empty for model <v>" (no state of the
        served version: every user is cold-start). ``last_reload``: the last admin reload on any worker
        (``result``, ``error``, versions, ``at``); ``last_reload_error``: the error of the newer of that and
        this worker's own last reload (a failure to follow another worker's reload shows on this worker).
        ``index_fallback``: ``{"wanted", "serving", "error"}`` while an older version serves because CURRENT's
        does not load. ``tower``: "hybrid" (fresh events reach the user vector) or "unsplit" (cached vectors).
        ``ranker``: the served ranker (version, the retriever it was trained for), None without one."""
        r = self.retriever
        if r is None:
            return None
        b = r.bundle
        store = r.store_status()
        # Probe again once per retry window (store_retry_s), whatever the last status: a store filled, unlocked
        # or restarted shows up, and so does one that lost its data while "ok" (a Redis restarted empty: every
        # lookup then succeeds and finds nothing, which requests cannot tell from users without a state).
        if r.health.due(b.model_version):
            store = await asyncio.to_thread(r.check_store)
        last = await asyncio.to_thread(read_outcome, self.settings.artifacts, self._started)
        # the newer of the shared outcome and this worker's own attempt (a failure to follow another's reload)
        shared = last is not None and last["at_s"] >= self._reloaded_at
        error = last.get("error") if shared else self.last_reload_error
        fallback = self.index_fallback
        tower = "hybrid" if b.model_config.online_head else "unsplit"
        return {"status": "ready", "model_version": b.model_version, "index_version": b.index_version,
                "tower": tower, "items": len(b.index), "store": store, "store_error": r.health.error,
                "last_reload_error": error, "last_reload": last,
                "index_fallback": vars(fallback).copy() if fallback is not None else None,
                "ranker": b.ranker.describe() if b.ranker is not None else None}  # fmt: skip


def _ranker(bundle: Bundle) -> str | None:
    return bundle.ranker.version if bundle.ranker is not None else None


def warm_histories(bundle: Bundle) -> None:
    """Build the user-id table the ranker reads before requests need it (a bundle without a ranker: nothing)."""
    if bundle.ranker is not None:
        histories(bundle).row("")
