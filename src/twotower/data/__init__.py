"""Data layer: read logs, hash ids, build time-ordered sequences and splits."""

from .dataset import SequenceData
from .prepare import PrepareConfig, build, prepare_files, prepare_movielens
from .readers import DataError, ItemSchema, LogSchema, UserSchema

__all__ = [
    "DataError",
    "ItemSchema",
    "LogSchema",
    "PrepareConfig",
    "SequenceData",
    "UserSchema",
    "build",
    "prepare_files",
    "prepare_movielens",
]
