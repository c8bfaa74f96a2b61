"""Feature store for cached offline user states: one protocol, SQLite (embedded) and Redis backends."""

from ..errors import StoreConfigError, StoreError, StoreMissing, StoreUnavailable
from .base import FeatureStore, StateBatch, StoreConfig
from .codec import bytes_per_user, decode_states, encode_states
from .factory import open_store

__all__ = [
    "FeatureStore",
    "StateBatch",
    "StoreConfig",
    "StoreConfigError",
    "StoreError",
    "StoreMissing",
    "StoreUnavailable",
    "bytes_per_user",
    "decode_states",
    "encode_states",
    "open_store",
]
