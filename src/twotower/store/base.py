"""The feature store for cached offline user states: one protocol, an embedded SQLite and a Redis backend.

The hybrid user tower splits in two: an offline encoder turns a user's history into a **state**
``float32 [T, D]`` (T state tokens, D model dim), and an online head reads that state at request time. The
store keeps one state per ``(user_id, model_version)`` with two timestamps: ``snapshot_ts`` (every event with
timestamp < snapshot_ts was encoded) and ``last_event_ts`` (the last encoded event, -1 if none).

**Version skew.** States of several model versions coexist: a new model's refresh job fills its version while
the old model keeps serving its own. A read always names the model version it will feed. A user who has a
state of another version only (or of the requested version but another ``[T, D]``) is reported as
``found=False, mismatch=True`` and counted in ``stats["mismatches"]``; the other version's numbers are never
returned, because a state is meaningless to any head but the one trained with its encoder. Every record
also carries its version in its own header, and the read checks it (defence in depth against a key bug).

**Atomicity.** ``put_many`` validates the whole call (shapes, finite values, timestamps, ids) before writing
anything, so a bad batch writes nothing. SQLite then writes the call in one transaction. Redis writes it in
MULTI/EXEC transactions of ``StoreConfig.batch`` users; every record is self-contained, so a reader sees
either a user's old or new state, and re-running a failed call is idempotent.

**Failures.** A backend that is down or too slow raises :class:`StoreUnavailable` within about
``StoreConfig.timeout_s``, never hangs; the caller serves the cold-start path instead. A wrong URL or, for a
reader (``open_store(url, create=False)``: the service), a SQLite file that does not exist raises
:class:`StoreConfigError` / :class:`StoreMissing`: waiting cannot fix those.

This module is the interface and what every backend shares; it imports no backend. The backends are
:mod:`~twotower.store.sqlite` and :mod:`~twotower.store.redis_store`; :func:`~twotower.store.factory.open_store`
picks one by URL.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..config import check, check_float, check_int
from .codec import DTYPES, Unpacked

# Versions and namespaces become parts of Redis keys and SCAN patterns: no ':' and no glob characters.
NAME_RE = re.compile(r"[A-Za-z0-9._+@=-]{1,128}")
NAME_RULE = "1-128 characters from A-Z a-z 0-9 . _ + @ = -"
STAT_KEYS = ("reads", "hits", "misses", "mismatches", "corrupt", "errors", "writes")


@dataclass
class StoreConfig:
    """How states are written and how long a backend may take. Saved with every feature-store snapshot."""

    dtype: str = "float32"  # float32 | float16 | int8 (payload codec for writes; reads accept any)
    ttl_s: int = 0  # Redis only: seconds a state lives after its write; 0 = forever
    namespace: str = "tt"  # Redis key prefix, so several deployments can share one server
    timeout_s: float = 0.25  # Redis socket connect/read timeout; SQLite waits max(5 s, this) for a write lock
    batch: int = 1000  # users per write transaction (Redis) / executemany chunk (SQLite)

    def __post_init__(self) -> None:
        check(self.dtype in DTYPES, "dtype", self.dtype, f"use one of {'|'.join(DTYPES)}")
        check_int(self, "ttl_s", 0)  # 0 = no expiry
        check_float(self, "timeout_s", 0.0, lo_open=True)  # seconds
        check_int(self, "batch", 1)
        ok = isinstance(self.namespace, str) and NAME_RE.fullmatch(self.namespace) is not None
        check(ok, "namespace", self.namespace, f"use {NAME_RULE} (it becomes part of store keys)")


@dataclass
class StateBatch:
    """States read for ``B`` users, in request order."""

    states: np.ndarray  # float32 [B, T, D], zeros where not found
    found: np.ndarray  # bool [B]: a state of the requested model version and shape exists
    mismatch: np.ndarray  # bool [B]: not found, but a state of another version (or shape) exists
    snapshot_ts: np.ndarray  # int64 [B]: events with timestamp < snapshot_ts were encoded; -1 where not found
    last_event_ts: np.ndarray  # int64 [B]: timestamp of the last encoded event; -1 where not found or none


@runtime_checkable
class FeatureStore(Protocol):
    """What every backend offers. Shapes: B users, T state tokens, D model dim."""

    config: StoreConfig
    stats: dict[str, int]  # reads, hits, misses, mismatches, corrupt, errors, writes (monotonic counters)

    def put_many(
        self,
        user_ids: Sequence[str],
        states: np.ndarray,
        snapshot_ts: np.ndarray,
        last_event_ts: np.ndarray,
        model_version: str,
    ) -> None:
        """Write ``float32 [B, T, D]`` states with ``int64 [B]`` timestamps; a bad call writes nothing."""
        ...

    def get_many(self, user_ids: Sequence[str], model_version: str, shape: tuple[int, int]) -> StateBatch:
        """Read the states of ``model_version`` whose ``[T, D]`` equals ``shape``."""
        ...

    def get_meta(self, user_ids: Sequence[str], model_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found bool [B], snapshot_ts int64 [B], last_event_ts int64 [B])`` without decoding payloads."""
        ...

    def delete(self, user_ids: Sequence[str], model_version: str | None = None) -> int:
        """Delete the users' states of ``model_version`` (None = every version); returns how many were deleted."""
        ...

    def stale_users(self, since: int, model_version: str) -> list[str]:
        """Users with a state of ``model_version`` whose ``snapshot_ts < since`` (to re-encode)."""
        ...

    def count(self, model_version: str) -> int:
        """Number of states stored for ``model_version``."""
        ...

    def has_states(self, model_version: str) -> bool:
        """Whether at least one state of ``model_version`` is stored (cheaper than ``count``)."""
        ...

    def versions(self) -> dict[str, int]:
        """``{model_version: number of states}`` for every version with at least one state."""
        ...

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


def check_name(name: str, what: str) -> str:
    """``name`` (a model version) if it can be part of a store key, else ValueError naming the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} must be {NAME_RULE} (it becomes part of store keys); rename it, e.g. 'm-2024-05-01'"
        )
    return name


def check_ids(user_ids: Sequence[str]) -> list[str]:
    ids = list(user_ids)
    bad = [u for u in ids if not isinstance(u, str) or not u]
    if bad:
        raise ValueError(f"user ids must be non-empty strings, got {bad[0]!r}; convert ids with str() first")
    return ids


def check_put(
    user_ids: Sequence[str], states: np.ndarray, snapshot_ts: np.ndarray, last_event_ts: np.ndarray, model_version: str
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Validate a whole ``put_many`` call before anything is written; returns normalised arguments."""
    check_name(model_version, "model_version")
    ids = check_ids(user_ids)
    B = len(ids)
    states = np.asarray(states)
    if states.ndim != 3 or states.shape[0] != B or 0 in states.shape[1:]:
        raise ValueError(f"states must be float [B={B}, T, D] with T, D >= 1, got shape {list(states.shape)}")
    if not np.issubdtype(states.dtype, np.floating):
        raise ValueError(f"states must be floating point, got {states.dtype}")
    if not np.isfinite(states).all():
        rows = np.flatnonzero(~np.isfinite(states).reshape(B, -1).all(axis=1))
        raise ValueError(
            f"states of {len(rows)} user(s) contain NaN or inf (first: {ids[rows[0]]!r}); "
            "nothing was written; fix the encoder output"
        )
    out = []
    for name, ts in (("snapshot_ts", snapshot_ts), ("last_event_ts", last_event_ts)):
        ts = np.asarray(ts)
        if ts.shape != (B,) or not np.issubdtype(ts.dtype, np.integer):
            raise ValueError(f"{name} must be int64 [B={B}], got {ts.dtype} {list(ts.shape)}")
        out.append(ts.astype(np.int64))
    snap, last = out
    if (snap < 0).any():
        raise ValueError("snapshot_ts must be >= 0 (seconds since the epoch)")
    if ((last != -1) & (last >= snap)).any() or (last < -1).any():
        raise ValueError("last_event_ts must be < snapshot_ts (only events before the snapshot are encoded), or -1")
    if len(set(ids)) != B:
        dup = next(u for u, n in Counter(ids).items() if n > 1)
        raise ValueError(f"user id {dup!r} appears twice in one put_many call; deduplicate the batch")
    return ids, states.astype(np.float32, copy=False), snap, last


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        T, D = (int(x) for x in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be the expected state shape (T, D), got {shape!r}") from None
    if T < 1 or D < 1:
        raise ValueError(f"shape (T, D) must be >= 1 each, got {shape!r}")
    return T, D


def chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for lo in range(0, len(seq), n):
        yield seq[lo : lo + n]


class StoreBase:
    """Shared plumbing: thread-safe counters, the read bookkeeping, context-manager support."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._stats_lock = threading.Lock()

    def _count(self, **inc: int) -> None:
        with self._stats_lock:
            for k, v in inc.items():
                self.stats[k] += int(v)

    def _finish_read(self, got: Unpacked, other_version: np.ndarray) -> StateBatch:
        """Turn decoded records into a StateBatch; ``other_version`` marks users with a state of another version."""
        mismatch = ~got.ok & (got.skew | other_version)
        n, hits = len(got.ok), int(got.ok.sum())
        self._count(reads=n, hits=hits, misses=n - hits, mismatches=int(mismatch.sum()), corrupt=int(got.corrupt.sum()))
        return StateBatch(got.states, got.ok, mismatch, got.snapshot_ts, got.last_event_ts)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def redact_url(url: str) -> str:
    """The URL without its password (``redis://:***@host:6379/0``), for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparsable, e.g. a bad port
        pass
    return re.sub(r":[^:/@]*@", ":***@", url)  # a malformed URL (e.g. "redis//:pw@host") may still hold one
