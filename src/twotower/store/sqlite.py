"""Embedded feature store: one SQLite file, the default for development, tests and single-host serving.

One table, keyed by ``(user_id, model_version)`` so several model versions coexist::

    states(user_id, model_version, snapshot_ts, last_event_ts, dtype, t, d, blob) WITHOUT ROWID

``blob`` is the full self-describing record of :mod:`twotower.store.codec` (header + version + payload); the
other columns repeat header fields so that ``get_meta``, ``stale_users`` and ``count`` never read a blob. An
index on ``(model_version, snapshot_ts)`` serves ``stale_users``/``count``/``versions``.

Settings: WAL journal (readers never block the writer nor each other), ``synchronous=NORMAL`` (a power cut may
lose the last transactions but never corrupts the file; the refresh job can redo them), 16 KiB pages for new
files (WITHOUT ROWID tables want rows well under 1/20 of a page). ``put_many`` and ``delete`` are one
``BEGIN IMMEDIATE`` transaction each; reads run in a read transaction, so a read sees one consistent snapshot.
Each thread gets its own connection (the service calls ``get_many`` from a thread pool). The service opens
the file as a reader (``create=False``: ``mode=rw``, never created, lock waits of ``timeout_s``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from ..errors import StoreConfigError, StoreError, StoreMissing, StoreUnavailable
from .base import StateBatch, StoreBase, StoreConfig, check_ids, check_name, check_put, check_shape, chunks
from .codec import pack_records, unpack_records

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "model_version", "snapshot_ts", "last_event_ts", "dtype", "t", "d", "blob")
SCHEMA = """
CREATE TABLE IF NOT EXISTS states (
    user_id TEXT NOT NULL,
    model_version TEXT NOT NULL,
    snapshot_ts INTEGER NOT NULL,
    last_event_ts INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    t INTEGER NOT NULL,
    d INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (user_id, model_version)
) WITHOUT ROWID
"""
INDEX = "CREATE INDEX IF NOT EXISTS states_by_version ON states (model_version, snapshot_ts)"
IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's bound-parameter limit


def _in(n: int) -> str:
    return ",".join("?" * n)


class SQLiteStore(StoreBase):
    """Feature store in the SQLite file ``path``.

    ``create=True`` (writers: the refresh job, ``serve-prepare``): a missing file is created with its parent
    directories. ``create=False`` (readers: the service): the file must exist and hold the table, so a typo
    in the path is an error instead of a new, empty store that serves every user cold-start; reads also give
    up after ``config.timeout_s`` on a locked file instead of waiting 5 s per request.
    """

    def __init__(self, path: str | Path, config: StoreConfig | None = None, create: bool = True) -> None:
        super().__init__(config or StoreConfig())
        if self.config.ttl_s:
            raise StoreConfigError(
                f"StoreConfig.ttl_s={self.config.ttl_s} is Redis-only; with SQLite set ttl_s=0 and expire old "
                "states with stale_users() + delete()"
            )
        self.path = Path(path)
        self.create = create
        if self.path.is_dir():
            raise StoreConfigError(f"store path {self.path} is a directory; name a file such as {self.path}/states.db")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise StoreMissing(
                f"feature store {self.path} does not exist (the service never creates one: a typo would serve "
                f"every user cold-start); fill it with `twotower refresh-states --run RUN --store "
                f"sqlite:///{self.path}` (or `twotower serve-prepare`), or point --store / TWOTOWER_STORE_URL at "
                "the existing file"
            )
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self._check_table()
        except BaseException:
            self.close()  # no connection left open behind a refused store
            raise

    def _check_table(self) -> None:
        """Create (writers only) and check the ``states`` table and its index."""
        with self._guard("open"):
            conn = self._conn()
            if self.create:
                conn.execute(SCHEMA)
            cols = tuple(row[1] for row in conn.execute("PRAGMA table_info(states)"))
            if not cols:
                raise StoreError(
                    f"{self.path} has no 'states' table: it is not a twotower feature store; fill it with "
                    "`twotower refresh-states` or point the store URL at the right file"
                )
            if cols != COLUMNS:
                raise StoreError(
                    f"{self.path} has a 'states' table with columns {list(cols)}, not a twotower feature store "
                    f"({list(COLUMNS)}); point the store URL at another file"
                )
            if self.create:
                conn.execute(INDEX)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"feature store {self.path} is closed; open it again with open_store()")
        # Autocommit mode (isolation_level=None): transactions are explicit below. check_same_thread=False only
        # so that close() may close every thread's connection; each connection is used by its own thread.
        # A reader opens with mode=rw, which never creates the file (nor its parent directories).
        target, uri = (self.path, False) if self.create else (f"{self.path.resolve().as_uri()}?mode=rw", True)
        timeout = max(5.0, self.config.timeout_s) if self.create else self.config.timeout_s
        conn = sqlite3.connect(target, timeout=timeout, isolation_level=None, check_same_thread=False, uri=uri)
        try:
            conn.execute("PRAGMA page_size=16384")  # only takes effect on a new, empty file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            self._count(errors=1)
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreUnavailable(
                    f"{self.path} stayed locked by another writer during {op} ({exc}); retry later, or run one "
                    "writer at a time"
                ) from exc
            raise StoreError(f"{self.path}: {op} failed ({exc}); check the disk and file permissions") from exc
        except sqlite3.DatabaseError as exc:
            self._count(errors=1)
            raise StoreError(
                f"{self.path} is not a readable SQLite feature store ({exc}) during {op}; move or delete the file "
                "and re-run the state refresh to rebuild it"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self, op: str, write: bool) -> Iterator[sqlite3.Connection]:
        with self._guard(op):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # the original error matters, not a failed rollback
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def put_many(
        self,
        user_ids: Sequence[str],
        states: np.ndarray,
        snapshot_ts: np.ndarray,
        last_event_ts: np.ndarray,
        model_version: str,
    ) -> None:
        """Write ``float32 [B, T, D]`` states in one transaction (all or nothing); replaces existing states."""
        ids, states, snap, last = check_put(user_ids, states, snapshot_ts, last_event_ts, model_version)
        if not ids:
            return
        _, T, D = states.shape
        dtype = self.config.dtype
        records = pack_records(states, snap, last, model_version, dtype)
        rows = list(zip(ids, repeat(model_version), snap.tolist(), last.tolist(), repeat(dtype), repeat(T),
                        repeat(D), records))  # fmt: skip
        with self._transaction("put_many", write=True) as conn:
            for part in chunks(rows, self.config.batch):
                conn.executemany(f"INSERT OR REPLACE INTO states VALUES ({_in(len(COLUMNS))})", part)
        self._count(writes=len(ids))

    def get_many(self, user_ids: Sequence[str], model_version: str, shape: tuple[int, int]) -> StateBatch:
        """Read ``[T, D] = shape`` states of ``model_version``; other versions/shapes count as mismatches."""
        ids = check_ids(user_ids)
        check_name(model_version, "model_version")
        shape = check_shape(shape)
        unique = list(dict.fromkeys(ids))
        blobs: dict[str, bytes] = {}
        other: set[str] = set()
        with self._transaction("get_many", write=False) as conn:
            for part in chunks(unique, IN_CHUNK):
                q = f"SELECT user_id, blob FROM states WHERE model_version = ? AND user_id IN ({_in(len(part))})"
                blobs.update(conn.execute(q, (model_version, *part)))
            misses = [u for u in unique if u not in blobs]
            for part in chunks(misses, IN_CHUNK):
                q = f"SELECT DISTINCT user_id FROM states WHERE model_version != ? AND user_id IN ({_in(len(part))})"
                other.update(u for (u,) in conn.execute(q, (model_version, *part)))
        got = unpack_records([blobs.get(u) for u in ids], model_version, shape)
        if got.corrupt.any():
            log.warning("%s: %d corrupt state record(s) ignored", self.path, int(got.corrupt.sum()))
        return self._finish_read(got, np.array([u in other for u in ids], bool))

    def get_meta(self, user_ids: Sequence[str], model_version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(found bool [B], snapshot_ts int64 [B], last_event_ts int64 [B])``, reading no blobs."""
        ids = check_ids(user_ids)
        check_name(model_version, "model_version")
        meta: dict[str, tuple[int, int]] = {}
        with self._transaction("get_meta", write=False) as conn:
            for part in chunks(list(dict.fromkeys(ids)), IN_CHUNK):
                q = (
                    "SELECT user_id, snapshot_ts, last_event_ts FROM states "
                    f"WHERE model_version = ? AND user_id IN ({_in(len(part))})"
                )
                meta.update((u, (s, e)) for u, s, e in conn.execute(q, (model_version, *part)))
        found = np.array([u in meta for u in ids], bool)
        snap = np.array([meta.get(u, (-1, -1))[0] for u in ids], np.int64)
        last = np.array([meta.get(u, (-1, -1))[1] for u in ids], np.int64)
        return found, snap, last

    def delete(self, user_ids: Sequence[str], model_version: str | None = None) -> int:
        """Delete the users' states of ``model_version`` (None = every version) in one transaction."""
        ids = list(dict.fromkeys(check_ids(user_ids)))
        if model_version is not None:
            check_name(model_version, "model_version")
        n = 0
        with self._transaction("delete", write=True) as conn:
            for part in chunks(ids, IN_CHUNK):
                if model_version is None:
                    cur = conn.execute(f"DELETE FROM states WHERE user_id IN ({_in(len(part))})", part)
                else:
                    q = f"DELETE FROM states WHERE model_version = ? AND user_id IN ({_in(len(part))})"
                    cur = conn.execute(q, (model_version, *part))
                n += cur.rowcount
        return n

    def stale_users(self, since: int, model_version: str) -> list[str]:
        """Users with a ``model_version`` state whose ``snapshot_ts < since``, in ``snapshot_ts`` order."""
        check_name(model_version, "model_version")
        with self._transaction("stale_users", write=False) as conn:
            q = "SELECT user_id FROM states WHERE model_version = ? AND snapshot_ts < ? ORDER BY snapshot_ts"
            return [u for (u,) in conn.execute(q, (model_version, int(since)))]

    def count(self, model_version: str) -> int:
        """Number of states stored for ``model_version``."""
        check_name(model_version, "model_version")
        with self._transaction("count", write=False) as conn:
            return conn.execute("SELECT COUNT(*) FROM states WHERE model_version = ?", (model_version,)).fetchone()[0]

    def has_states(self, model_version: str) -> bool:
        """Whether at least one state of ``model_version`` is stored (one index probe)."""
        check_name(model_version, "model_version")
        with self._transaction("has_states", write=False) as conn:
            q = "SELECT 1 FROM states WHERE model_version = ? LIMIT 1"
            return conn.execute(q, (model_version,)).fetchone() is not None

    def versions(self) -> dict[str, int]:
        """``{model_version: number of states}``."""
        with self._transaction("versions", write=False) as conn:
            return dict(conn.execute("SELECT model_version, COUNT(*) FROM states GROUP BY model_version"))

    def close(self) -> None:
        """Close every thread's connection."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, dtype={self.config.dtype!r})"
