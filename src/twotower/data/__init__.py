"""Data layer: read logs, hash ids, build time-ordered sequences and splits.

Importing the package stays light: the reader of prepared datasets (:class:`SequenceData`, which the service
uses) and the configs are imported at once; the preparation pipeline (``build``, ``prepare_files``,
``prepare_movielens``) only when first used, so the service never loads the writer and its encoders.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import DataError
from .config import PrepareConfig
from .dataset import SequenceData
from .schemas import ItemSchema, LogSchema, UserSchema

_LAZY = {"build": "prepare", "prepare_files": "prepare", "prepare_movielens": "prepare"}

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


def __getattr__(name: str) -> Any:
    """``from twotower.data import prepare_files``: import the pipeline on first use (module docstring)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
