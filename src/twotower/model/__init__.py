"""Model: hash embeddings, user tower, candidate tower."""

from .config import ModelConfig
from .towers import ItemInputs, TwoTower, UserInputs

__all__ = ["ItemInputs", "ModelConfig", "TwoTower", "UserInputs"]
