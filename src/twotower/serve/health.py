"""The service's side of the feature store: opening it for serving, and its health as requests and ``/readyz``
see it.

The service opens the store read-only (:func:`open_serving_store`): a missing SQLite file is an error at
start-up, never a new empty store; a store that exists but cannot be opened yet (locked, corrupt) is opened
later, and the service serves the fallback path meanwhile.

:class:`StoreHealth` keeps one small piece of state apart from the request path: whether the store answered
last time (and why not), the retry window after a failure (a paused Redis would otherwise add its timeout to
every request), and the model version the store holds no state of (``"empty for model <v>"``: every user is
cold-start). Requests report what they saw (:meth:`StoreHealth.failed`, :meth:`StoreHealth.answered`);
``/readyz`` and reloads probe (:meth:`StoreHealth.check`), keeping to the same window.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import StoreConfigError, StoreError
from ..store import FeatureStore, open_store
from ..store.base import redact_url
from ..store.deferred import DeferredStore

log = logging.getLogger(__name__)


class RateLimitedLog:
    """Emit a warning at most once per ``every_s`` seconds, with the number of suppressed repeats."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last, self._suppressed = -float("inf"), 0
        self._lock = threading.Lock()

    def warning(self, msg: str, *args) -> None:
        """``logger.warning(msg, *args)`` unless one was emitted less than ``every_s`` seconds ago."""
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every_s:
                self._suppressed += 1
                return
            n, self._suppressed, self._last = self._suppressed, 0, now
        self.logger.warning(msg + (f" ({n} similar warnings suppressed)" if n else ""), *args)


def open_serving_store(url: str) -> FeatureStore:
    """The service's side of the store at ``url``. A wrong URL or a missing SQLite file raises
    :class:`~twotower.store.StoreConfigError` (the service must not start: retrying cannot help). A store that
    exists but cannot be opened now (locked by another process, corrupt) becomes a :class:`DeferredStore` that
    is opened on a later request: the service starts, serves the fallback path and reports the store as
    unavailable until then."""
    try:
        return open_store(url, create=False)
    except StoreConfigError:
        raise
    except StoreError as exc:  # the caller logs it (Service.start) and /readyz reports it
        return DeferredStore(lambda: open_store(url, create=False), redact_url(url), last_error=str(exc))


def check_serving_store(url: str) -> None:
    """Raise :class:`~twotower.store.StoreConfigError` when the service would refuse to start on ``url`` (a wrong
    URL, a missing SQLite file); other store failures pass (the service starts on the fallback path). For the
    CLI, so that a typo is one error line before any worker process starts."""
    try:
        open_store(url, create=False).close()
    except StoreConfigError:
        raise
    except StoreError:
        pass


class StoreHealth:
    """Whether the store answers, since when it is skipped, and which model version it holds no state of.

    ``ok``/``error``: the last outcome and its message (for ``/readyz``); ``empty_for``: a model version the
    store was found to hold no state of. ``retry_s``: after a failure the store is skipped this long, and
    probes (:meth:`check`) of one version are at most this frequent.
    """

    def __init__(self, store: FeatureStore, retry_s: float = 1.0) -> None:
        self.store, self.retry_s = store, retry_s
        self.ok = not isinstance(store, DeferredStore)
        self.error: str | None = getattr(store, "last_error", None)
        self.empty_for: str | None = None
        self._skip_until = 0.0  # requests skip the store until then (monotonic seconds)
        self._checked: tuple[str | None, float] = (None, 0.0)  # (model version, no probe before) of check()
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log)

    def skipping(self, now: float) -> bool:
        """Whether requests at ``now`` (monotonic) skip the store: it failed less than ``retry_s`` ago."""
        return now < self._skip_until

    def failed(self, exc: Exception, now: float) -> None:
        """A request's read failed: skip the store for ``retry_s`` and log (rate-limited)."""
        self._skip_until = now + self.retry_s
        self.ok, self.error = False, str(exc)
        self._warn.warning("feature store failed (%s); serving the fallback path", exc)

    def answered(self, found_any: bool) -> None:
        """A request's read succeeded; ``found_any``: it found a state of the served version (so not empty)."""
        self.ok, self.error = True, None
        if self.empty_for is not None and found_any:
            self.empty_for = None  # filled since the last check

    def status(self, version: str) -> str:
        """What ``/readyz`` reports for the served ``version``: "ok", "unavailable" or "empty for model <v>"."""
        if not self.ok:
            return "unavailable"
        if self.empty_for is not None and self.empty_for == version:
            return f"empty for model {self.empty_for}"
        return "ok"

    def due(self, version: str) -> bool:
        """Whether :meth:`check` of ``version`` would query the store now (not within the window)."""
        checked, not_before = self._checked
        return version != checked or time.monotonic() >= max(not_before, self._skip_until)

    def check(self, version: str) -> str:
        """Probe the store for ``version`` (one existence query; opens a deferred store) and return
        :meth:`status`. Warns once per version when the store holds none of its states.

        Throttled like the request path: after a probe of a version, or while requests skip a failed store,
        the next ``retry_s`` seconds return :meth:`status` without touching the store. Unthrottled, a probe per
        ``/readyz`` poll would be a Redis SCAN of the whole keyspace (every state expired) or an open attempt on
        a locked SQLite file (holding the lock requests wait on). A new version (a reload) is probed at once."""
        now = time.monotonic()
        with self._lock:  # concurrent probes: one goes to the store, the others return the cached status
            checked, not_before = self._checked
            if version == checked and now < max(not_before, self._skip_until):
                return self.status(version)
            self._checked = (version, now + self.retry_s)
        try:
            has = self.store.has_states(version)
        except StoreError as exc:
            self._skip_until = max(self._skip_until, now + self.retry_s)  # requests skip it too
            self.ok, self.error = False, str(exc)
            return self.status(version)
        self.ok, self.error = True, None
        if has:
            self.empty_for = None
        elif self.empty_for != version:
            self.empty_for = version
            log.warning(
                "feature store %r holds no state for model %s: every user gets the cold_start path; fill it "
                "with `twotower refresh-states --run ARTIFACTS/models/%s --store URL` (or serve-prepare), or "
                "point TWOTOWER_STORE_URL at the store that has them",
                self.store,
                version,
                version,
            )
        return self.status(version)
