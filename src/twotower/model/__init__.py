"""Model: shared hash embeddings, item tower, user encoder, online head; checkpoint reading.

Encoders in, vectors out. Inputs are :mod:`twotower.features.inputs` dataclasses; nothing here imports
training code, so the service loads a model through :func:`twotower.model.checkpoint.load_model` alone.
"""

from .config import ModelConfig
from .online import OnlineHead
from .two_tower import TwoTower

__all__ = ["ModelConfig", "OnlineHead", "TwoTower"]
