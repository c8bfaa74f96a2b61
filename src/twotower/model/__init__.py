"""Model: hash embeddings, user tower (offline encoder + optional online head), candidate tower."""

from .config import ModelConfig
from .inputs import Context, ItemInputs, UserInputs
from .online import OnlineHead
from .towers import TwoTower

__all__ = ["Context", "ItemInputs", "ModelConfig", "OnlineHead", "TwoTower", "UserInputs"]
