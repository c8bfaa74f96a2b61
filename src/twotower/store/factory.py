"""Opening a feature store by URL: the one place that knows every backend.

``open_store`` picks the backend from the URL's form and applies its query parameters over a
:class:`~twotower.store.base.StoreConfig`. Accepted forms::

    sqlite:///relative/path.db        sqlite:////absolute/path.db        path/ending.db (.sqlite, .sqlite3)
    redis://[:password@]host:port/db?namespace=tt&ttl=86400&dtype=int8&timeout=0.25&batch=1000

A URL of another form, an unknown parameter or a bad value is a :class:`~twotower.errors.StoreConfigError`
(retrying cannot fix it, so the service refuses to start); passwords never appear in messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import StoreConfigError
from .base import FeatureStore, StoreConfig, redact_url
from .redis_store import RedisStore
from .sqlite import SQLiteStore

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
URL_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, a bare path ending .db/.sqlite/.sqlite3, "
    "redis://[:password@]host:port/db (optionally ?namespace=..&ttl=..&dtype=..&timeout=..&batch=..)"
)
_QUERY_FIELDS = {"namespace": ("namespace", str), "ttl": ("ttl_s", int), "dtype": ("dtype", str),
                 "timeout": ("timeout_s", float), "batch": ("batch", int)}  # fmt: skip


def _apply_query(url: str, query: str, config: StoreConfig) -> StoreConfig:
    """``config`` with the URL's query parameters applied; every problem is a StoreConfigError."""
    url = redact_url(url)  # named in errors
    changes = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _QUERY_FIELDS:
            raise StoreConfigError(
                f"unknown store URL parameter {key!r} in {url!r}; valid ones: {sorted(_QUERY_FIELDS)}"
            )
        field, kind = _QUERY_FIELDS[key]
        try:
            changes[field] = kind(value)
        except ValueError as exc:
            raise StoreConfigError(
                f"store URL parameter {key}={value!r} in {url!r} is not a valid {kind.__name__}"
            ) from exc
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as exc:
        raise StoreConfigError(f"store URL {url!r}: {exc}") from exc


def open_store(url: str, config: StoreConfig | None = None, create: bool = True) -> FeatureStore:
    """Open the store at ``url``; URL query parameters override ``config``.

    ``create=False`` is for readers (the service): a missing SQLite file raises :class:`StoreMissing` instead
    of being created empty. Redis has nothing to create; the flag does not apply to it.

    Accepted forms: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, a bare path ending ``.db``,
    ``.sqlite`` or ``.sqlite3``, and ``redis://[:password@]host:port/db?namespace=tt&ttl=86400&dtype=int8&
    timeout=0.25&batch=1000``. A Redis store connects lazily, so a service can start while Redis is down.
    """
    config = config or StoreConfig()
    url = str(url)
    base, _, query = url.partition("?")
    if base.startswith("sqlite:///") or (("://" not in base) and base.endswith(SQLITE_SUFFIXES)):
        path = base[len("sqlite:///") :] if base.startswith("sqlite:///") else base
        if not path or path == ":memory:":
            raise StoreConfigError(f"store URL {url!r} names no file; use e.g. sqlite:///runs/states.db")
        return SQLiteStore(Path(path), _apply_query(url, query, config), create=create)
    if base.startswith(("redis://", "rediss://")):
        return RedisStore(base, _apply_query(url, query, config))
    raise StoreConfigError(f"cannot open feature store {redact_url(url)!r}: unknown form; accepted: {URL_FORMS}")
