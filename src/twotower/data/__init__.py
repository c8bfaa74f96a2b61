"""Data layer: read logs, hash ids, build time-ordered sequences and splits."""

from ..errors import DataError
from .dataset import SequenceData
from .prepare import PrepareConfig, build, prepare_files, prepare_movielens
from .readers import ItemSchema, LogSchema, UserSchema

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
