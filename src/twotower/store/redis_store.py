"""Production feature store on Redis (named ``redis_store`` so that ``import redis`` means the client).

Key layout, ``ns`` = ``StoreConfig.namespace``::

    {ns}:s:{model_version}:{user_id}   record bytes (codec header + version + payload), optional TTL
    {ns}:v:{user_id}                   the model version last written for that user (skew detection)
    {ns}:versions                      set of model versions ever written (for delete(None) and versions())

A read is one MGET of state keys and, for the misses only, one MGET of version pointers: a pointer naming
another version means version skew (``mismatch=True``). The pointer is the *last* version written, so it is a
cheap, not an exhaustive, skew detector: after ``delete(users, v)`` removes v's pointer, a user's remaining
state of an older version is no longer reported.

``put_many`` writes one MULTI/EXEC transaction per ``StoreConfig.batch`` users (MSET without TTL, SET EX
with one); ``stale_users``, ``count`` and ``versions`` SCAN ``{ns}:s:{version}:*``, which is O(number of keys):
fine for the refresh job, not for a request path. Connection errors and timeouts (``StoreConfig.timeout_s``,
no retries, no backoff) raise :class:`StoreUnavailable` and count in ``stats["errors"]``; the client's pool
reconnects by itself, so the first call after Redis is back succeeds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import StoreError, StoreUnavailable
from .base import StateBatch, StoreBase, StoreConfig, check_ids, check_name, check_put, check_shape, chunks, redact_url
from .codec import HEADER_BYTES, pack_records, read_headers, unpack_records, version_matches

log = logging.getLogger(__name__)


def _import_redis():
    try:
        import redis
    except ImportError as exc:
        raise ImportError("the Redis feature store needs the Redis client: pip install redis") from exc
    return redis


class RedisStore(StoreBase):
    """Feature store on the Redis server at ``url`` (``redis://[:password@]host:port/db``); connects lazily."""

    def __init__(self, url: str, config: StoreConfig | None = None) -> None:
        super().__init__(config or StoreConfig())
        redis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = redact_url(url)  # for messages and logs: no password
        timeout = self.config.timeout_s
        # No retries: a down server must fail within ~timeout_s so the caller can serve the cold-start path.
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._unavailable = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._redis_error = redis.exceptions.RedisError
        ns = self.config.namespace
        self._versions_key = f"{ns}:versions"

    def _skey(self, model_version: str, user_id: str) -> bytes:
        return f"{self.config.namespace}:s:{model_version}:{user_id}".encode()

    def _vkey(self, user_id: str) -> bytes:
        return f"{self.config.namespace}:v:{user_id}".encode()

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        try:
            yield
        except self._unavailable as exc:
            self._count(errors=1)
            raise StoreUnavailable(
                f"Redis at {self.url} is unavailable ({type(exc).__name__}: {exc}) during {op}; serve without cached "
                f"states and check that redis-server is running and reachable (timeout {self.config.timeout_s} s)"
            ) from exc
        except self._redis_error as exc:
            self._count(errors=1)
            raise StoreError(f"Redis at {self.url} refused {op}: {exc}; check the server's maxmemory and logs") from exc

    def put_many(
        self,
        user_ids: Sequence[str],
        states: np.ndarray,
        snapshot_ts: np.ndarray,
        last_event_ts: np.ndarray,
        model_version: str,
    ) -> None:
        """Write ``float32 [B, T, D]`` states; validated whole first, then one transaction per batch."""
        ids, states, snap, last = check_put(user_ids, states, snapshot_ts, last_event_ts, model_version)
        if not ids:
            return
        records = pack_records(states, snap, last, model_version, self.config.dtype)
        ttl = self.config.ttl_s or None
        version = model_version.encode()
        with self._guard("put_many"):
            for lo in range(0, len(ids), self.config.batch):
                part = ids[lo : lo + self.config.batch]
                pipe = self.client.pipeline(transaction=True)
                if ttl is None:
                    pipe.mset({self._skey(model_version, u): r for u, r in zip(part, records[lo:])})
                    pipe.mset(dict.fromkeys(map(self._vkey, part), version))
                else:
                    for u, r in zip(part, records[lo:]):
                        pipe.set(self._skey(model_version, u), r, ex=ttl)
                        pipe.set(self._vkey(u), version, ex=ttl)
                pipe.sadd(self._versions_key, version)
                pipe.execute()
        self._count(writes=len(ids))

    def get_many(self, user_ids: Sequence[str], model_version: str, shape: tuple[int, int]) -> StateBatch:
        """Read ``[T, D] = shape`` states of ``model_version``: one MGET, plus one for the misses' pointers."""
        ids = check_ids(user_ids)
        check_name(model_version, "model_version")
        shape = check_shape(shape)
        other = np.zeros(len(ids), bool)
        with self._guard("get_many"):
            blobs = self.client.mget([self._skey(model_version, u) for u in ids]) if ids else []
            got = unpack_records(blobs, model_version, shape)
            miss = np.flatnonzero(~got.ok & ~got.skew & ~got.corrupt)
            if len(miss):
                version = model_version.encode()
                pointers = self.client.mget([self._vkey(ids[i]) for i in miss])
                other[miss] = [p is not None and p != version for p in pointers]
        if got.corrupt.any():
            log.warning("Redis %s: %d corrupt state record(s) ignored", self.url, int(got.corrupt.sum()))
        return self._finish_read(got, other)

    def _headers(self, keys: Sequence[bytes], model_version: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ok bool [K], HEADER [K])`` for ``keys``, reading only header + version bytes (GETRANGE)."""
        end = HEADER_BYTES + len(model_version.encode()) - 1
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.getrange(k, 0, end)
        raw = pipe.execute() if keys else []
        heads = read_headers(raw)
        return version_matches(raw, heads, model_version), heads

    def get_meta(self, user_ids: Sequence[str], model_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found bool [B], snapshot_ts int64 [B], last_event_ts int64 [B])`` from record headers only."""
        ids = check_ids(user_ids)
        check_name(model_version, "model_version")
        with self._guard("get_meta"):
            ok, heads = self._headers([self._skey(model_version, u) for u in ids], model_version)
        return ok, np.where(ok, heads["snapshot_ts"], -1), np.where(ok, heads["last_event_ts"], -1)

    def _known_versions(self) -> list[str]:
        return sorted(v.decode() for v in self.client.smembers(self._versions_key))

    def delete(self, user_ids: Sequence[str], model_version: str | None = None) -> int:
        """Delete the users' states of ``model_version`` (None = every version ever written) and stale pointers."""
        ids = list(dict.fromkeys(check_ids(user_ids)))
        if model_version is not None:
            check_name(model_version, "model_version")
        if not ids:
            return 0
        with self._guard("delete"):
            versions = [model_version] if model_version is not None else self._known_versions()
            pointers = [self._vkey(u) for u in ids]
            if model_version is not None:  # keep pointers that name another version
                current = self.client.mget(pointers)
                pointers = [k for k, p in zip(pointers, current) if p == model_version.encode()]
            key_parts = list(chunks([self._skey(v, u) for v in versions for u in ids], self.config.batch))
            pipe = self.client.pipeline(transaction=True)
            for part in key_parts + list(chunks(pointers, self.config.batch)):
                pipe.delete(*part)
            deleted = pipe.execute()
        return int(sum(deleted[: len(key_parts)]))  # states only, not pointers

    def _scan(self, model_version: str) -> Iterator[list[bytes]]:
        """State keys of ``model_version`` in lists of up to ``batch`` (SCAN: O(all keys), never blocks Redis)."""
        pattern = f"{self.config.namespace}:s:{model_version}:*"
        part: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            part.append(key)
            if len(part) >= self.config.batch:
                yield part
                part = []
        if part:
            yield part

    def stale_users(self, since: int, model_version: str) -> list[str]:
        """Users with a ``model_version`` state whose ``snapshot_ts < since`` (SCAN + header reads)."""
        check_name(model_version, "model_version")
        prefix = len(self._skey(model_version, ""))
        out: list[str] = []
        with self._guard("stale_users"):
            for keys in self._scan(model_version):
                ok, heads = self._headers(keys, model_version)
                out += [k[prefix:].decode() for k in np.asarray(keys, object)[ok & (heads["snapshot_ts"] < since)]]
        return out

    def count(self, model_version: str) -> int:
        """Number of states of ``model_version`` (SCAN: O(all keys))."""
        check_name(model_version, "model_version")
        with self._guard("count"):
            return sum(len(keys) for keys in self._scan(model_version))

    def has_states(self, model_version: str) -> bool:
        """Whether a state of ``model_version`` exists: the set of written versions first (O(1)), then SCAN up to
        the first key (O(all keys) only when every state of a written version has expired or been deleted)."""
        check_name(model_version, "model_version")
        with self._guard("has_states"):
            if not self.client.sismember(self._versions_key, model_version):
                return False
            pattern = f"{self.config.namespace}:s:{model_version}:*"
            return next(iter(self.client.scan_iter(match=pattern, count=1000)), None) is not None

    def versions(self) -> dict[str, int]:
        """``{model_version: number of states}`` for the versions that still have states."""
        with self._guard("versions"):
            counts = {v: sum(len(k) for k in self._scan(v)) for v in self._known_versions()}
        return {v: n for v, n in counts.items() if n}

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, namespace={self.config.namespace!r}, dtype={self.config.dtype!r})"
