"""The model's dataclass config, saved beside every checkpoint and artifact."""

from __future__ import annotations

from dataclasses import dataclass

POSITIONS = ("none", "learned", "time", "learned+time")
POOLINGS = ("mean", "last")


@dataclass
class ModelConfig:
    """Phoenix-style two-tower model. ``D`` = ``dim``, ``H`` = ``num_hashes``, ``S`` = ``max_len``."""

    dim: int = 64
    num_hashes: int = 2
    item_buckets: int = 1 << 16  # per entity type; bucket 0 is padding
    author_buckets: int = 1 << 14
    user_buckets: int = 1 << 14
    feature_buckets: int = 1 << 14
    num_actions: int = 0  # from the dataset manifest
    num_surfaces: int = 0
    max_len: int = 200  # history length S (the user token comes on top)
    num_layers: int = 2
    num_heads: int = 2
    ffn_mult: int = 4
    dropout: float = 0.2  # embeddings and residual branches
    attn_dropout: float = 0.0  # on attention weights (forces the slower math kernel on CPU)
    causal: bool = True  # causal: every position is a training example; bidirectional: the last only
    positions: str = "learned"  # none | learned | time | learned+time (time = log2 gap buckets)
    pooling: str = "last"  # last | mean (masked mean over the visible prefix, as in the Phoenix seed)
    user_token: bool = True  # prepend the hashed user id (+ user features) token
    time_buckets: int = 32

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("item_buckets", "author_buckets", "user_buckets", "feature_buckets"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 (bucket 0 is padding)")
