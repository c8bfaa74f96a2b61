"""Dataset arrays -> model inputs (the one place the hash contract ``to_buckets`` is applied).

Below the model in the layer order: nothing here imports :mod:`twotower.model`; the featurizer takes any
config with the fields it reads (:class:`~twotower.features.featurizer.FeatureConfig`). The model and the
service need only the input dataclasses and the clock features, so the featurizer (which reads datasets) is
imported on first use, not with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .clock import clock_features, gap_buckets
from .inputs import Context, ItemInputs, Snapshots, UserInputs

if TYPE_CHECKING:
    from .featurizer import FeatureConfig, Featurizer

__all__ = [
    "Context",
    "FeatureConfig",
    "Featurizer",
    "ItemInputs",
    "Snapshots",
    "UserInputs",
    "clock_features",
    "gap_buckets",
]


def __getattr__(name: str) -> Any:
    if name in ("Featurizer", "FeatureConfig"):
        from . import featurizer

        return getattr(featurizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
